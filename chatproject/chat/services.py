"""Chat services: the writes of the chat product (validate, then act)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

import streaming
from chatproject.chat.markdown import MARKDOWN_VERSION, render_markdown
from chatproject.chat.models import Conversation, Message
from chatproject.llm import ChatMessage
from streaming.core.text import clean_text

TITLE_CHARS = 60
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_LINE_MARKS = re.compile(r"^[ \t]*(?:#{1,6}|>+|[-+])[ \t]+", re.MULTILINE)
_INLINE_MARKS = re.compile(r"\*+|`+|~~|__")
_TRAILING = " .,;:!?-"


class ChatError(streaming.StreamError):
    """A refused chat action, with a stable ``code`` (sent as an ``error`` frame)."""


def check_prompt(text: Any) -> str:
    """The prompt's text, or ChatError: 1 to CHAT_PROMPT_MAX_CHARS characters, not blank."""
    limit = settings.CHAT_PROMPT_MAX_CHARS
    if not isinstance(text, str):
        raise ChatError("invalid_frame", "A prompt's text must be a string.")
    if not text.strip():
        raise ChatError("prompt_empty", "The prompt is empty.")
    if len(text) > limit:
        raise ChatError("prompt_too_long", f"The prompt is longer than {limit} characters.")
    if clean_text(text) != text:
        raise ChatError(
            "invalid_text",
            "The prompt holds characters that cannot be stored (NUL or a lone surrogate).",
        )
    return text


def check_client_id(client_id: Any) -> str:
    """A prompt's client id ("" when none): 1 to 64 characters of ``[A-Za-z0-9_-]``."""
    if client_id is None:
        return ""
    if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
        raise ChatError(
            "invalid_frame", "client_id must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -."
        )
    return client_id


def conversation_create(*, owner: Any, title: str = "") -> Conversation:
    return Conversation.objects.create(owner=owner, title=title[:200])


@dataclass(frozen=True)
class Prompt:
    """A stored prompt: its two messages, whether this call stored them (False: the
    client id was used already, nothing was stored), the answer's LLM context, and the
    answer it replaces when the question is answered again."""

    question: Message
    answer: Message
    created: bool
    history: list[ChatMessage]
    replaced: Message | None = None


def conversation_prompt(*, conversation: Conversation, text: Any, client_id: Any = None) -> Prompt:
    """Store the user's message and an assistant message with its new stream, claimed
    by this process (the caller drives it), in one transaction: all or nothing, so a
    refused stream (too many active) leaves no row behind. A client id already used in
    the conversation stores nothing and returns the existing messages."""
    text = check_prompt(text)
    client_id = check_client_id(client_id)
    if client_id and (existing := _prompt_with_client_id(conversation, client_id)):
        return existing
    try:
        with transaction.atomic():
            question = Message.objects.create(
                conversation=conversation,
                role=Message.Role.USER,
                text=text,
                status="done",
                client_id=client_id,
            )
            answer = _answer_create(conversation, question)
            fields: dict[str, Any] = {"updated_at": timezone.now()}
            if not conversation.title:
                fields["title"] = conversation_title(text)
            Conversation.objects.filter(pk=conversation.pk).update(**fields)
            history = conversation_history(conversation=conversation, before=answer)
    except IntegrityError:
        # The same client id from another socket or process, at the same moment.
        if client_id and (existing := _prompt_with_client_id(conversation, client_id)):
            return existing
        raise
    return Prompt(question, answer, True, history)


def conversation_regenerate(*, conversation: Conversation) -> Prompt:
    """Answer the conversation's last question again, in one transaction: a new
    assistant message with a new stream, claimed by this process (the caller drives it),
    which replaces the question's current answer. The replaced answer stays in the
    transcript, marked ``replaced_by``, and is no longer LLM context: the new answer's
    history is the conversation before the question, and the question."""
    with transaction.atomic():
        question = (
            Message.objects.select_for_update()
            .filter(conversation=conversation, role=Message.Role.USER)
            .order_by("-id")
            .first()
        )
        if question is None:
            raise ChatError("no_user_message", "There is no question to answer again.")
        replaced = Message.objects.filter(prompt=question).first()
        if replaced is not None:
            Message.objects.filter(pk=replaced.pk).update(prompt=None)  # one answer a question
        answer = _answer_create(conversation, question)
        if replaced is not None:
            Message.objects.filter(pk=replaced.pk).update(replaced_by=answer)
            replaced.replaced_by = answer
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
        history = conversation_history(conversation=conversation, before=answer)
    return Prompt(question, answer, True, history, replaced)


def _answer_create(conversation: Conversation, question: Message) -> Message:
    """The answer to a question: its stream, claimed by this process, and its message.
    Inside the caller's transaction, so a refused stream rolls back what it wrote."""
    try:
        stream = streaming.create_stream(
            group=conversation.group_name, owner=conversation.owner, claimed=True
        )
    except streaming.StreamError as exc:
        raise ChatError(exc.code, exc.detail) from None
    return Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        stream=stream,
        prompt=question,
        status=stream.status,
        last_seq=-1,
    )


def _prompt_with_client_id(conversation: Conversation, client_id: str) -> Prompt | None:
    question = (
        Message.objects.filter(conversation=conversation, client_id=client_id)
        .select_related("answer")
        .first()
    )
    if question is None:
        return None
    return Prompt(question, question.answer, False, [])


def conversation_title(text: str) -> str:
    """A conversation's title from its first prompt, as lists and tabs show it: plain
    text on one line (Markdown's marks dropped, a link's text kept), cut at a word with
    "…" past TITLE_CHARS. ``titleFrom`` in static/chat/transcript.js is the same rule,
    for the title the page shows before any reload."""
    plain = _INLINE_MARKS.sub("", _LINE_MARKS.sub("", _LINK.sub(r"\1", text)))
    plain = " ".join(plain.split())
    if len(plain) <= TITLE_CHARS:
        return plain
    cut = plain.rfind(" ", 0, TITLE_CHARS + 1)
    head = plain[:cut] if cut > 0 else plain[: TITLE_CHARS - 1]
    return head.rstrip(_TRAILING) + "…"


def message_finalize(*, stream: Any) -> None:
    """Copy a final stream into its message (text, reasoning, status, what the LLM server
    reported, how long it took), with the text rendered once as HTML for every later
    page: the adapter's hook, in the stream's final transaction."""
    duration = None
    if stream.started_at is not None and stream.finished_at is not None:
        duration = (stream.finished_at - stream.started_at).total_seconds()
    Message.objects.filter(stream_id=stream.id).update(
        text=stream.text,
        reasoning=stream.reasoning,
        status=stream.status,
        last_seq=stream.last_seq,
        error=stream.error,
        finish_reason=stream.finish_reason,
        model=stream.model,
        prompt_tokens=stream.prompt_tokens,
        completion_tokens=stream.completion_tokens,
        reasoning_tokens=stream.reasoning_tokens,
        duration=duration,
        html=render_markdown(stream.text),
        html_version=MARKDOWN_VERSION,
    )


def conversation_history(*, conversation: Conversation, before: Message) -> list[ChatMessage]:
    """The conversation up to ``before``, as context for the LLM: the messages' text
    only (an answer's reasoning is never context); unfinished and replaced answers are
    left out."""
    rows = Message.objects.filter(
        conversation=conversation, id__lt=before.id, replaced_by=None
    ).exclude(role=Message.Role.ASSISTANT, status__in=["pending", "streaming"])
    return [ChatMessage(role=m.role, content=m.text) for m in rows.only("role", "text")]
