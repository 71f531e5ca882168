"""Chat selectors: the reads of the chat product, in a constant number of queries."""

from __future__ import annotations

from typing import Any

from django.http import Http404

from chatproject.chat.markdown import MARKDOWN_VERSION
from chatproject.chat.models import Conversation, Message
from streaming.selectors import active_stream_bodies

ACTIVE = ("pending", "streaming")


def conversation_for(*, user: Any, conversation_id: int) -> Conversation:
    """The user's conversation, or Http404 (a foreign id is as unknown as a missing one).
    Its owner is ``user``, set on it, so that no prompt fetches the owner again."""
    conversation = Conversation.objects.filter(pk=conversation_id, owner_id=user.pk).first()
    if conversation is None:
        raise Http404("No such conversation.")
    conversation.owner = user
    return conversation


def conversations_for(*, user: Any) -> list[Conversation]:
    return list(Conversation.objects.filter(owner_id=user.pk).order_by("-updated_at", "-id"))


def message_payload(message: Message) -> dict[str, Any]:
    """A message as the messages API and the pages see it."""
    return {
        "id": message.pk,
        "role": message.role,
        "text": message.text,
        "reasoning": message.reasoning,
        "stream_id": str(message.stream_id) if message.stream_id else None,
        "status": message.status,
        "last_seq": message.last_seq,
        "client_id": message.client_id or None,
        "finish_reason": message.finish_reason or None,
        "model": message.model or None,
        "usage": message.usage,
        "duration": message.duration,
        "created_at": message.created_at,
        "error": message.error,
        "replaced_by": message.replaced_by_id,
    }


def latest_answer(*, conversation: Conversation) -> Message | None:
    """The conversation's latest answer that was not replaced (the one an AI SDK client
    shows last), whatever its status; None when it has none."""
    return (
        Message.objects.filter(
            conversation=conversation, role=Message.Role.ASSISTANT, replaced_by=None
        )
        .order_by("-id")
        .first()
    )


def conversation_messages(
    *, conversation: Conversation, with_html: bool = False
) -> list[dict[str, Any]]:
    """Every message with the text persisted so far: three queries whatever the length.
    A streaming message gets its persisted chunks and the seq to resume after.
    ``with_html``: each payload's ``html`` is the stored HTML where it is current, else
    None (render the text)."""
    rows = Message.objects.filter(conversation=conversation).order_by("id")
    messages = list(rows if with_html else rows.defer("html"))
    active_ids = [m.stream_id for m in messages if m.stream_id and m.status in ACTIVE]
    bodies = active_stream_bodies(active_ids) if active_ids else {}
    payloads = []
    for message in messages:
        payload = message_payload(message)
        if with_html:
            current = message.html_version == MARKDOWN_VERSION
            payload["html"] = message.html if current else None
        body = bodies.get(message.stream_id)
        if body is not None:
            payload.update(
                text=body.text,
                reasoning=body.reasoning,
                status=body.status,
                last_seq=body.last_seq,
                error=body.error or "",
            )
        payloads.append(payload)
    return payloads
