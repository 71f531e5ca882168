"""Chat services: the writes of the chat product (validate, then act)."""

from __future__ import annotations

import operator
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

import streaming
from chatproject.chat.markdown import MARKDOWN_VERSION, render_markdown
from chatproject.chat.models import Conversation, Message
from chatproject.llm import ChatMessage
from streaming.asyncdb import GroupCommit
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


@dataclass(frozen=True)
class PromptRequest:
    """A prompt to store: its conversation, its text and its client id (both checked
    when stored)."""

    conversation: Conversation
    text: Any
    client_id: Any = None


def conversation_prompt(*, conversation: Conversation, text: Any, client_id: Any = None) -> Prompt:
    """Store the user's message and an assistant message with its new stream, claimed
    by this process (the caller drives it), in one transaction: all or nothing, so a
    refused stream (too many active) leaves no row behind. A client id already used in
    the conversation stores nothing and returns the existing messages."""
    (stored,) = conversation_prompts([PromptRequest(conversation, text, client_id)])
    if isinstance(stored, ChatError):
        raise stored
    return stored


def conversation_prompts(requests: Sequence[PromptRequest]) -> list[Prompt | ChatError]:
    """``conversation_prompt`` for prompts that arrived together (a burst, through
    ``aconversation_prompt``): one transaction for all, each kind of row in one
    statement, so a prompt costs a fraction of the ORM's work alone. Each result is the
    prompt's, as alone: its ``Prompt``, or the ``ChatError`` refusing it, which stored
    nothing of it. If the transaction fails on a client id stored at the same moment
    elsewhere, each prompt is stored again in a transaction of its own."""
    results: dict[int, Prompt | ChatError] = {}
    checked: dict[int, PromptRequest] = {}
    for index, request in enumerate(requests):
        try:
            text, client_id = check_prompt(request.text), check_client_id(request.client_id)
        except ChatError as exc:
            results[index] = exc
        else:
            checked[index] = PromptRequest(request.conversation, text, client_id)
    results |= _prompts_with_client_id(checked)
    fresh = {index: request for index, request in checked.items() if index not in results}
    try:
        results |= _prompts_store(fresh)
    except IntegrityError:
        # The same client id from another socket or process (or twice in this batch).
        if len(fresh) > 1:
            results |= {i: conversation_prompts([r])[0] for i, r in fresh.items()}
        elif not (existing := _prompts_with_client_id(fresh)):
            raise
        else:
            results |= existing
    return [results[index] for index in range(len(requests))]


def _prompts_store(requests: dict[int, PromptRequest]) -> dict[int, Prompt | ChatError]:
    """Store checked prompts in one transaction: their streams (claimed), questions and
    answers in one INSERT each, their conversations touched in one UPDATE, their
    histories read in one SELECT. A prompt whose stream is refused stores nothing."""
    if not requests:
        return {}
    results: dict[int, Prompt | ChatError] = {}
    with transaction.atomic():
        streams = streaming.create_streams(
            [streaming.NewStream(r.conversation.group_name, r.conversation.owner)
             for r in requests.values()],
            claimed=True,
        )  # fmt: skip
        accepted: list[tuple[int, PromptRequest, Any]] = []
        for (index, request), stream in zip(requests.items(), streams, strict=True):
            if isinstance(stream, streaming.StreamError):
                results[index] = ChatError(stream.code, stream.detail)
            else:
                accepted.append((index, request, stream))
        if not accepted:
            return results
        questions = Message.objects.bulk_create(
            [
                Message(conversation=request.conversation, role=Message.Role.USER,
                        text=request.text, status="done", client_id=request.client_id)
                for _, request, _ in accepted
            ]
        )  # fmt: skip
        answers = Message.objects.bulk_create(
            [
                Message(conversation=request.conversation, role=Message.Role.ASSISTANT,
                        stream=stream, prompt=question, status=stream.status, last_seq=-1)
                for (_, request, stream), question in zip(accepted, questions, strict=True)
            ]
        )  # fmt: skip
        _conversations_touch({r.conversation.pk: r.text for _, r, _ in reversed(accepted)})
        histories = conversation_histories(answers)
    for (index, _, _), question, answer in zip(accepted, questions, answers, strict=True):
        results[index] = Prompt(question, answer, True, histories[answer.pk])
    return results


def _conversations_touch(first_texts: dict[int, str]) -> None:
    """Mark conversations as updated now, and title those without a title from their
    first prompt's text (in SQL, so a stale copy of a conversation never retitles it)."""
    untitled = Q(title="")
    Conversation.objects.filter(pk__in=first_texts).update(
        updated_at=timezone.now(),
        title=Case(
            *[When(untitled & Q(pk=pk), then=Value(conversation_title(text)))
              for pk, text in first_texts.items()],
            default=F("title"),
        ),
    )  # fmt: skip


#: The most prompts one transaction stores together.
PROMPTS_PER_TRANSACTION = 100
_prompts = GroupCommit(conversation_prompts, max_items=PROMPTS_PER_TRANSACTION)


async def aconversation_prompt(
    *, conversation: Conversation, text: Any, client_id: Any = None
) -> Prompt:
    """``conversation_prompt`` from async code, off the event loop. Prompts arriving
    while the process's previous ones are being stored are stored together, in one
    transaction (``conversation_prompts``): a burst costs the database, and the
    process's CPU, a few statements for all instead of five to seven each."""
    return await _prompts.submit(PromptRequest(conversation, text, client_id))


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
        history = conversation_histories([answer])[answer.pk]
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


def _prompts_with_client_id(requests: dict[int, PromptRequest]) -> dict[int, Prompt]:
    """The stored prompts of the requests whose client id their conversation used
    already (one query for all)."""
    wanted = [Q(conversation=r.conversation, client_id=r.client_id)
              for r in requests.values() if r.client_id]  # fmt: skip
    if not wanted:
        return {}
    questions = Message.objects.filter(reduce(operator.or_, wanted)).select_related("answer")
    stored = {(q.conversation_id, q.client_id): q for q in questions}
    return {
        index: Prompt(question, question.answer, False, [])
        for index, request in requests.items()
        if (question := stored.get((request.conversation.pk, request.client_id)))
    }


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


def conversation_histories(answers: Sequence[Message]) -> dict[int, list[ChatMessage]]:
    """Each answer's context for the LLM (by the answer's id): its conversation up to
    and including its question, the messages' text only (an answer's reasoning is never
    context), unfinished and replaced answers left out. One query, however many
    conversations the answers are in."""
    if not answers:
        return {}
    rows = (
        Message.objects.filter(
            conversation__in={a.conversation_id for a in answers},
            id__lte=max(a.prompt_id for a in answers),
            replaced_by=None,
        )
        .exclude(role=Message.Role.ASSISTANT, status__in=["pending", "streaming"])
        .order_by("conversation_id", "id")
        .values_list("conversation_id", "id", "role", "text")
    )
    by_conversation: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    for conversation_id, message_id, role, text in rows:
        by_conversation[conversation_id].append((message_id, role, text))
    return {
        a.pk: [
            ChatMessage(role=role, content=text)
            for message_id, role, text in by_conversation[a.conversation_id]
            if message_id <= a.prompt_id
        ]
        for a in answers
    }
