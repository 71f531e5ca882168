"""Fixtures of the chat product's suite: a user with a conversation, prompts whose
answers are written as the component's driver writes them (or, with ``answer_in``, in any
state and aged), and a count of every query whatever thread runs it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from chatproject.chat.models import Conversation, Message
from chatproject.chat.services import conversation_create, conversation_prompt
from streaming import Finish, services
from streaming.core.deltas import TEXT
from streaming.core.lifecycle import Status
from streaming.models import Stream
from tests.fixtures import parts_of


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("ann", password="pw")


@pytest.fixture
def conversation(user):
    return Conversation.objects.create(owner=user, title="Plans")


def persist_answer(
    conversation: Conversation,
    text: str,
    chunks: Sequence[str | tuple[str, str]],
    final: Status | None,
    *,
    client_id: str | None = None,
    report: Finish | None = None,
) -> Message:
    """A prompt whose answer has persisted ``chunks`` (answer text, or (part, text)) and,
    if given, a final status: the services the process writer calls, in its
    transactions, with nobody driving the stream."""
    prompt = conversation_prompt(conversation=conversation, text=text, client_id=client_id)
    stream_id = str(prompt.answer.stream_id)
    services.take_claim(stream_id)  # claimed by this process, written by hand here
    batches = [chunk if isinstance(chunk, tuple) else ("text", chunk) for chunk in chunks]
    if batches:
        with transaction.atomic():
            written = services.chunks_append(writes=[services.ChunkWrite(stream_id, 0, batches)])
        assert written == {stream_id: True}
    if final:
        with transaction.atomic():
            ended = services.stream_end(
                stream_id=stream_id,
                status=final,
                written=parts_of(batches),
                first_seq=len(batches),
                report=report,
            )
        assert ended is not None
    prompt.answer.refresh_from_db()
    return prompt.answer


@pytest.fixture
def answer():
    return persist_answer


@contextlib.contextmanager
def every_query(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL of every statement run meanwhile, on any thread's connection (async views
    run their queries on worker threads, which CaptureQueriesContext does not see)."""
    statements: list[str] = []
    real = CursorWrapper._execute_with_wrappers

    def counted(self, sql, params, many, executor):
        statements.append(sql)
        return real(self, sql, params, many, executor)

    with monkeypatch.context() as patch:
        patch.setattr(CursorWrapper, "_execute_with_wrappers", counted)
        yield statements


@pytest.fixture
def all_queries(monkeypatch):
    return lambda: every_query(monkeypatch)


@pytest.fixture
def use_fake_llm(settings, fake_llm):
    """The ``openai`` provider, pointed at the fake LLM server of this test."""
    settings.LLM_PROVIDER = "openai"
    settings.LLM_BASE_URL = fake_llm.base_url
    settings.LLM_API_KEY = "test"
    return fake_llm


@pytest.fixture
def chat_owner(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("chat-owner")  # no password: fast


@pytest.fixture
def answer_in(chat_owner: Any, settings: Any) -> Callable[..., Message]:
    """``answer_in(status, chunks=[...], finished_ago=..., lease_in=...)``: the assistant
    message of a new prompt in a new conversation, its stream with ``chunks`` and, for a
    final ``status``, ended ``finished_ago`` ago (the chat's hook copied it into the
    message). The stream's lease ends ``lease_in`` from now (negative: expired)."""
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 0

    def make(
        status: Status = Status.DONE,
        *,
        chunks: Sequence[str] = ("Hello. ", "World."),
        finished_ago: timedelta = timedelta(0),
        lease_in: timedelta = timedelta(minutes=5),
    ) -> Message:
        status = Status(status)
        conversation = conversation_create(owner=chat_owner, title="Plans")
        answer = conversation_prompt(conversation=conversation, text="Hello?").answer
        stream_id = str(answer.stream_id)
        with transaction.atomic():
            batches = [(TEXT, text) for text in chunks]
            services.chunks_append(writes=[services.ChunkWrite(stream_id, 0, batches)])
            if status.is_final:
                services.stream_end(
                    stream_id=stream_id,
                    status=status,
                    written=parts_of(batches),
                    first_seq=len(batches),
                )
        now = timezone.now()
        aged: dict[str, Any] = {"lease_expires_at": now + lease_in}
        if status.is_final:
            aged["finished_at"] = now - finished_ago
        Stream.objects.filter(pk=stream_id).update(**aged)
        return Message.objects.get(pk=answer.pk)

    return make
