"""Pages and the messages API: translate HTTP to services and selectors, nothing more."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

import streaming
from chatproject.chat.selectors import conversation_for, conversation_messages, conversations_for
from chatproject.chat.services import conversation_create

#: The messages API's fields, as the contract lists them (the page also shows ``error``).
API_FIELDS = ("id", "role", "text", "stream_id", "status", "last_seq")


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


@require_GET
@streaming.json_login_required
def messages_api(request: HttpRequest, conversation_id: int) -> HttpResponse:
    try:
        conversation = conversation_for(user=request.user, conversation_id=conversation_id)
    except Http404:
        return JsonResponse({"error": "unknown_conversation"}, status=404)
    messages = conversation_messages(conversation=conversation)
    return JsonResponse({"messages": [{k: m[k] for k in API_FIELDS} for m in messages]})
