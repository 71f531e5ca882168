"""Pages and the messages API: translate HTTP to services and selectors, nothing more."""

from __future__ import annotations

import json
import logging
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.csrf import csrf_failure as html_csrf_failure
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chatproject.chat.consumers import message_event, message_frame
from chatproject.chat.models import Conversation
from chatproject.chat.selectors import conversation_for, conversation_messages, conversations_for
from chatproject.chat.services import (
    ChatError,
    Prompt,
    aconversation_prompt,
    conversation_create,
)
from chatproject.llm import get_provider
from streaming.asyncdb import run_in_db
from streaming.driver import drive_in_background
from streaming.events import drive_frames, follow_frames
from streaming.outages import TRANSIENT_ERRORS
from streaming.views import json_api, json_error, sse_response

logger = logging.getLogger(__name__)

#: The messages API's fields, as the contract lists them (the page also shows others).
API_FIELDS = (
    *("id", "role", "text", "reasoning", "stream_id", "status", "last_seq", "client_id"),
    *("finish_reason", "model", "usage"),
)


@require_GET
@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(
        request, "chat/home.html", {"conversations": conversations_for(user=request.user)}
    )


@require_POST
@login_required
def new_conversation(request: HttpRequest) -> HttpResponse:
    conversation = conversation_create(owner=request.user, title=request.POST.get("title", ""))
    return redirect("chat:conversation", conversation_id=conversation.pk)


@require_GET
@login_required
def conversation_page(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = conversation_for(user=request.user, conversation_id=conversation_id)
    messages = conversation_messages(conversation=conversation, with_html=True)
    return render(
        request,
        "chat/conversation.html",
        {
            "conversation": conversation,
            "messages": messages,
            "prompt_max_chars": settings.CHAT_PROMPT_MAX_CHARS,
        },
    )


async def user_conversation(request: HttpRequest, conversation_id: int) -> Conversation:
    try:
        return await run_in_db(conversation_for, user=request.user, conversation_id=conversation_id)
    except Http404:
        raise ChatError("unknown_conversation", "No such conversation.") from None


def json_body(request: HttpRequest, limit: int | None = None) -> dict[str, Any]:
    """The request's JSON object, or ChatError (not JSON, not an object, larger than
    ``limit`` bytes, by default CHAT_FRAME_MAX_BYTES)."""
    limit = settings.CHAT_FRAME_MAX_BYTES if limit is None else limit
    too_large = ChatError("frame_too_large", f"Bodies are limited to {limit} bytes.")
    try:
        raw = request.body
    except RequestDataTooBig:  # beyond DATA_UPLOAD_MAX_MEMORY_SIZE: Django refuses to read it
        raise too_large from None
    if len(raw) > limit:
        raise too_large
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ChatError("invalid_json", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ChatError("invalid_frame", "The body must be a JSON object.")
    return body


def wants_event_stream(request: HttpRequest) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


@require_http_methods(["GET", "POST"])
@json_api
async def messages_api(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = await user_conversation(request, conversation_id)
    if request.method == "POST":
        return await post_prompt(request, conversation)
    messages = await run_in_db(conversation_messages, conversation=conversation)
    return JsonResponse({"messages": [{k: m[k] for k in API_FIELDS} for m in messages]})


async def post_prompt(request: HttpRequest, conversation: Conversation) -> HttpResponse:
    """A prompt over HTTP, stored as the websocket's ``prompt`` frame stores it. With
    ``Accept: text/event-stream`` this response drives the answer (its client may leave:
    the answer goes on); without, 201 and the answer is generated on the server."""
    body = json_body(request)
    prompt = await aconversation_prompt(
        conversation=conversation,
        text=body.get("text"),
        client_id=body.get("client_id"),
    )
    messages = [message_frame(m, driving=False) for m in (prompt.question, prompt.answer)]
    stream_id, group = str(prompt.answer.stream_id), conversation.group_name
    if not prompt.created:
        if wants_event_stream(request):
            return sse_response(follow_frames(stream_id, group, after=-1, before=messages))
        payload = [m["message"] for m in messages]
        return JsonResponse({"messages": payload}, status=200)
    deltas = get_provider().stream(prompt.history)
    if wants_event_stream(request):
        messages[1] = message_frame(prompt.answer, driving=True)
        response = sse_response(drive_frames(stream_id, group, deltas, before=messages))
    else:
        drive_in_background(stream_id, deltas)
        response = JsonResponse({"messages": [m["message"] for m in messages]}, status=201)
    await announce_prompt(prompt, group)
    return response


async def announce_prompt(prompt: Prompt, group: str) -> None:
    try:
        await get_channel_layer().group_send(group, message_event(prompt, sender=""))
    except TRANSIENT_ERRORS as exc:
        logger.warning("could not announce the prompt's messages: %r", exc)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF refusals: a JSON error on the API, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return json_error("csrf_failed", f"CSRF verification failed: {reason}")
    return html_csrf_failure(request, reason)
