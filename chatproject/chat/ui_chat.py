"""The chat for Vercel AI SDK clients (``useChat``, docs/ai-sdk.md): thin encodings of
the same answers as the pages' websocket, through the component's ``streaming.aisdk``.

* ``POST /api/ui-chat``: ``DefaultChatTransport``'s turn. The last user message's text
  is the prompt (the server's own history is the LLM's context); the response drives the
  answer as a UI message stream. ``trigger: "regenerate-message"`` answers the
  conversation's last question again.
* ``GET /api/ui-chat/<conversation_id>/stream``: ``resumeStream()``. The conversation's
  last answer from its start, then live; 204 when it is not streaming.
* ``ws/ui-chat/``: AI SDK 7's ``WebSocketChatTransport``. ``send``, ``resume`` and
  ``abort`` frames, several requests on one socket, each answered by a task of its own.

The chat id the SDK sends (``id``, in every body and every frame) is the conversation's
id, so one socket serves every conversation of its user, as the transport expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET, require_POST

import streaming
from chatproject.chat.models import Conversation, Message
from chatproject.chat.selectors import conversation_for, latest_answer
from chatproject.chat.services import (
    ChatError,
    Prompt,
    aconversation_prompt,
    conversation_regenerate,
)
from chatproject.chat.views import announce_prompt, json_body
from chatproject.llm import get_provider
from streaming.aisdk import (
    ui_message_replay,
    ui_message_response,
    websocket_chat_frames,
    ws_error,
    ws_no_active,
    ws_start,
)
from streaming.asyncdb import run_in_db
from streaming.consumers import FLOOD_CLOSE_CODE, FloodError
from streaming.driver import drive_in_background
from streaming.events import drive_frames
from streaming.outages import TRANSIENT_ERRORS
from streaming.views import accessible_stream, json_api

logger = logging.getLogger(__name__)

SUBMIT, REGENERATE = "submit-message", "regenerate-message"
ROLES = frozenset({"system", "user", "assistant"})
#: Text parts of one user message are joined as paragraphs.
PART_SEPARATOR = "\n\n"
UNAVAILABLE_DETAIL = "The server is briefly unavailable; try again."
_ID = re.compile(r"[0-9]{1,18}")


# --- the SDK's request ---------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """What the server reads of the SDK's body or ``send`` frame: the conversation, the
    trigger, and the text of the last user message (None when there is none)."""

    conversation_id: int
    trigger: str
    text: str | None


def _shape_error(detail: str) -> ChatError:
    return ChatError("invalid_frame", detail)


def conversation_id_of(value: Any) -> int:
    """The SDK's chat id as a conversation id: a string (or number) of digits; any other
    string names no conversation of the user's."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _shape_error("id must be the conversation's id.")
    if not _ID.fullmatch(str(value)):
        raise ChatError("unknown_conversation", "No such conversation.")
    return int(value)


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    """The SDK's body (``id``, ``messages``, ``trigger``, ``messageId``), or ChatError."""
    trigger = body.get("trigger")
    if trigger not in (SUBMIT, REGENERATE):
        raise _shape_error(f"trigger must be {SUBMIT!r} or {REGENERATE!r}.")
    message_id = body.get("messageId")
    if message_id is not None and not isinstance(message_id, str):
        raise _shape_error("messageId must be a string.")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _shape_error("messages must be a list of UI messages.")
    for message in messages:
        _check_message(message)
    conversation_id = conversation_id_of(body.get("id"))
    users = [m for m in messages if m["role"] == "user"]
    text = None
    if users:
        texts = [p["text"] for p in users[-1]["parts"] if p["type"] == "text"]
        text = PART_SEPARATOR.join(texts)
    return ChatRequest(conversation_id, trigger, text)


def _check_message(message: Any) -> None:
    role = message.get("role") if isinstance(message, dict) else None
    if not isinstance(role, str) or role not in ROLES:
        raise _shape_error("Each message must be an object with a role.")
    parts = message.get("parts")
    if not isinstance(parts, list) or not all(
        isinstance(p, dict) and isinstance(p.get("type"), str) for p in parts
    ):
        raise _shape_error("Each message must have a list of parts with a type.")
    if any(p["type"] == "text" and not isinstance(p.get("text"), str) for p in parts):
        raise _shape_error("A text part's text must be a string.")


async def user_conversation(user: Any, conversation_id: int) -> Conversation:
    try:
        return await run_in_db(conversation_for, user=user, conversation_id=conversation_id)
    except Http404:
        raise ChatError("unknown_conversation", "No such conversation.") from None


async def store_turn(conversation: Conversation, request: ChatRequest) -> Prompt:
    """Store the turn as the pages' prompt does (nothing at all on a refusal)."""
    if request.trigger == REGENERATE:
        return await run_in_db(conversation_regenerate, conversation=conversation)
    if request.text is None:
        raise ChatError("no_user_message", "The request has no user message.")
    return await aconversation_prompt(conversation=conversation, text=request.text)


async def after_turn(prompt: Prompt, conversation: Conversation) -> None:
    """Once the answer runs: tell the conversation's sockets (our pages), and stop the
    answer a regenerated one replaces if it still streams."""
    await announce_prompt(prompt, conversation.group_name)
    replaced = prompt.replaced
    if replaced is not None and replaced.stream_id and replaced.status in ("pending", "streaming"):
        try:
            await streaming.cancel_stream(replaced.stream_id)
        except (streaming.StreamError, *TRANSIENT_ERRORS) as exc:
            logger.warning("could not stop the replaced answer %s: %r", replaced.pk, exc)


async def last_answer(
    user: Any, conversation: Conversation, *, streaming_only: bool = True
) -> Message | None:
    """The conversation's last answer if it is still streaming (an expired lease
    settled first), or, not ``streaming_only``, whatever its status; None when there is
    none, or its stream is gone."""
    answer = await run_in_db(latest_answer, conversation=conversation)
    if answer is None or answer.stream_id is None:
        return None
    try:
        stream = await accessible_stream(user, str(answer.stream_id))
    except streaming.StreamError:
        return None  # deleted meanwhile
    return None if streaming_only and stream.is_final else answer


# --- HTTP: DefaultChatTransport -------------------------------------------------------------


@require_POST
@json_api
async def ui_chat(request: HttpRequest) -> HttpResponse:
    """A turn: store the prompt (or the regenerated answer) and drive the answer from
    this response; a client that goes away leaves the answer running."""
    chat = parse_chat_request(json_body(request, settings.CHAT_UI_BODY_MAX_BYTES))
    conversation = await user_conversation(request.user, chat.conversation_id)
    prompt = await store_turn(conversation, chat)
    stream_id, group = str(prompt.answer.stream_id), conversation.group_name
    frames = drive_frames(stream_id, group, get_provider().stream(prompt.history))
    response = ui_message_response(
        frames, message_id=str(prompt.answer.pk), stream_id=stream_id, group=group, driving=True
    )
    await after_turn(prompt, conversation)
    return response


@require_GET
@json_api
async def ui_chat_stream(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """``resumeStream()``: the last answer from its start, then live; 204 when the
    conversation has no answer streaming."""
    conversation = await user_conversation(request.user, conversation_id_of(conversation_id))
    answer = await last_answer(request.user, conversation)
    if answer is None:
        return HttpResponse(status=204)
    return await ui_message_replay(
        str(answer.stream_id), conversation.group_name, message_id=str(answer.pk)
    )


# --- WebSocket: WebSocketChatTransport ------------------------------------------------------


@dataclass
class UIRequest:
    """One request of a socket: the answer it follows and the task that sends it."""

    stream_id: str
    task: asyncio.Task[None]


def parse_last_sequence(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _shape_error("lastSequence must be an integer >= 0.")
    return value


class UIChatConsumer(streaming.StreamConsumerMixin, AsyncJsonWebsocketConsumer):
    """``ws/ui-chat/``: a logged-in socket; each request names its conversation."""

    async def connect(self) -> None:
        self.max_frame_bytes = settings.CHAT_UI_BODY_MAX_BYTES
        self.requests: dict[str, UIRequest] = {}
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            self.log_refusal("websocket", "not signed in")
            await self.close()
            return
        await self.accept()

    async def disconnect(self, code: int) -> None:
        """Stop sending; the answers go on (a reload resumes them)."""
        for request in list(getattr(self, "requests", {}).values()):
            request.task.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        request_id = ""
        try:
            frame = await self.decode_frame(text_data, bytes_data)
            if not isinstance(frame.get("requestId"), str) or not frame["requestId"]:
                raise _shape_error("requestId must be a non-empty string.")
            request_id = frame["requestId"]
            if frame["type"] == "abort":
                await self.abort(request_id)
                return
            if request_id in self.requests:
                raise _shape_error("This requestId is already in use on this socket.")
            if frame["type"] == "send":
                await self.send_turn(request_id, frame)
            elif frame["type"] == "resume":
                await self.resume(request_id, frame)
            else:
                raise ChatError("unknown_type", f"Unknown frame type {frame['type']!r}.")
        except streaming.StreamError as exc:
            await self.send_json(ws_error(request_id, exc.detail))
        except FloodError:
            await self.close(code=FLOOD_CLOSE_CODE)
        except TRANSIENT_ERRORS as exc:
            logger.warning("frame not handled, a service is away: %r", exc)
            await self.send_json(ws_error(request_id, UNAVAILABLE_DETAIL))

    async def send_turn(self, request_id: str, frame: dict[str, Any]) -> None:
        """``send``: store and drive the answer (as POST /api/ui-chat does), and send it
        to this request as numbered chunks."""
        chat = parse_chat_request(frame)
        conversation = await user_conversation(self.scope["user"], chat.conversation_id)
        prompt = await store_turn(conversation, chat)
        stream_id = str(prompt.answer.stream_id)
        drive_in_background(stream_id, get_provider().stream(prompt.history))
        self.respond(request_id, prompt.answer, conversation)
        await after_turn(prompt, conversation)

    async def resume(self, request_id: str, frame: dict[str, Any]) -> None:
        """``resume``: the conversation's last answer from its start if it streams, or,
        with ``lastSequence``, exactly what follows it (even of an answer that just
        ended); ``no-active`` when there is nothing to send."""
        last_sequence = parse_last_sequence(frame.get("lastSequence"))
        conversation = await user_conversation(
            self.scope["user"], conversation_id_of(frame.get("id"))
        )
        answer = await last_answer(
            self.scope["user"], conversation, streaming_only=last_sequence is None
        )
        if answer is None:
            await self.send_json(ws_no_active(request_id))
            return
        await self.send_json(ws_start(request_id))
        self.respond(request_id, answer, conversation, last_sequence)

    async def abort(self, request_id: str) -> None:
        """``abort``: stop the request's answer, as ``cancel`` does, and its frames (the
        transport ignores them now); an unknown or finished request is left alone."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        request.task.cancel()
        await streaming.cancel_stream(request.stream_id)

    def respond(
        self,
        request_id: str,
        answer: Message,
        conversation: Conversation,
        last_sequence: int | None = None,
    ) -> None:
        """Send the answer to the request from a task of its own (strong reference kept
        in ``requests`` until it is done)."""
        stream_id = str(answer.stream_id)
        frames = websocket_chat_frames(
            stream_id,
            conversation.group_name,
            request_id=request_id,
            message_id=str(answer.pk),
            last_sequence=last_sequence,
        )
        task = asyncio.create_task(self._relay(request_id, frames), name=f"ui-chat-{request_id}")
        request = UIRequest(stream_id, task)
        self.requests[request_id] = request

        def forget(_: asyncio.Task[None]) -> None:
            if self.requests.get(request_id) is request:
                del self.requests[request_id]

        task.add_done_callback(forget)

    async def _relay(self, request_id: str, frames: Any) -> None:
        try:
            async for frame in frames:
                await self.send_json(frame)
        except Exception:
            logger.exception("WebSocket chat request %s failed", request_id)
            with contextlib.suppress(Exception):  # the socket may be gone too
                await self.send_json(ws_error(request_id, "The answer could not be sent."))
        finally:
            await frames.aclose()
