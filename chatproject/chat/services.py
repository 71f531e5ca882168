"""Chat services: the writes of the chat product (validate, then act)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

import streaming
from chatproject.chat.markdown import MARKDOWN_VERSION, render_markdown
from chatproject.chat.models import Conversation, Message
from chatproject.llm import ChatMessage

TITLE_CHARS = 60


class ChatError(Exception):
    """A refused chat action, with a stable ``code`` (sent as an ``error`` frame)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def check_prompt(text: Any) -> str:
    """The prompt's text, or ChatError: 1 to CHAT_PROMPT_MAX_CHARS characters, not blank."""
    limit = settings.CHAT_PROMPT_MAX_CHARS
    if not isinstance(text, str):
        raise ChatError("invalid_frame", "A prompt's text must be a string.")
    if not text.strip():
        raise ChatError("prompt_empty", "The prompt is empty.")
    if len(text) > limit:
        raise ChatError("prompt_too_long", f"The prompt is longer than {limit} characters.")
    if streaming.clean_text(text) != text:
        raise ChatError(
            "invalid_text",
            "The prompt holds characters that cannot be stored (NUL or a lone surrogate).",
        )
    return text


def conversation_create(*, owner: Any, title: str = "") -> Conversation:
    return Conversation.objects.create(owner=owner, title=title[:200])


@transaction.atomic
def conversation_prompt(*, conversation: Conversation, text: str) -> tuple[Message, Message]:
    """Store the user's message and a pending assistant message with its new stream.

    All or nothing: a refused stream (too many active) leaves no row behind.
    """
    text = check_prompt(text)
    try:
        stream = streaming.create_stream(group=conversation.group_name, owner=conversation.owner)
    except streaming.StreamError as exc:
        raise ChatError(exc.code, exc.detail) from None
    user_message = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, text=text, status="done"
    )
    assistant_message = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        stream=stream,
        status=stream.status,
        last_seq=-1,
    )
    fields: dict[str, Any] = {"updated_at": timezone.now()}
    if not conversation.title:
        fields["title"] = " ".join(text.split())[:TITLE_CHARS]
    Conversation.objects.filter(pk=conversation.pk).update(**fields)
    return user_message, assistant_message


def message_finalize(*, stream: Any) -> None:
    """Copy a final stream's text and status into its message, with the text rendered
    once as HTML for every later page (the adapter's hook, in the stream's final
    transaction)."""
    Message.objects.filter(stream_id=stream.id).update(
        text=stream.text,
        status=stream.status,
        last_seq=stream.last_seq,
        error=stream.error,
        html=render_markdown(stream.text),
        html_version=MARKDOWN_VERSION,
    )


def conversation_history(*, conversation: Conversation, before: Message) -> list[ChatMessage]:
    """The conversation up to ``before``, as context for the LLM. Unfinished answers
    (another still streaming) are left out."""
    rows = Message.objects.filter(conversation=conversation, id__lt=before.id).exclude(
        role=Message.Role.ASSISTANT, status__in=["pending", "streaming"]
    )
    return [ChatMessage(role=m.role, content=m.text) for m in rows.only("role", "text")]
