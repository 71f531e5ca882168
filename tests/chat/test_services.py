"""The chat services: a prompt stored and its stream claimed in one transaction, and a
final stream copied into its message."""

from __future__ import annotations

import re

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils.functional import SimpleLazyObject

from chatproject.chat import services as chat_services
from chatproject.chat.models import Message
from chatproject.chat.selectors import conversation_for
from chatproject.chat.services import conversation_prompt
from streaming import Finish, services
from streaming.core.lifecycle import Status
from streaming.models import Stream

# Transactional: the prompt's transaction must be the outermost one, as in production,
# so that its COMMIT is its own and its on-commit hooks run.
pytestmark = pytest.mark.django_db(transaction=True)

TRANSACTION = {"BEGIN", "BEGIN IMMEDIATE", "COMMIT"}  # PostgreSQL, SQLite
WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|SELECT .* FOR UPDATE)", re.IGNORECASE | re.DOTALL)


def test_a_prompts_rows_and_its_streams_claim_commit_in_one_transaction(conversation, monkeypatch):
    connection = connections["default"]
    commits: list[str] = []
    writes: list[tuple[str, bool]] = []
    real_commit = connection.commit

    def counted_commit() -> None:
        commits.append("COMMIT")
        real_commit()

    def record(execute, sql, params, many, context):
        if WRITE.match(sql):
            writes.append((sql.split()[0].upper(), connection.in_atomic_block))
        return execute(sql, params, many, context)

    monkeypatch.setattr(connection, "commit", counted_commit)
    with connection.execute_wrapper(record):
        prompt = conversation_prompt(conversation=conversation, text="Hi", client_id="c-1")
    services.take_claim(str(prompt.answer.stream_id))

    assert commits == ["COMMIT"]
    # Both messages, the claimed stream, the conversation's title: every write inside it.
    assert [kind for kind, _ in writes].count("INSERT") == 3
    assert all(inside for _, inside in writes), writes
    stream = Stream.objects.get(id=prompt.answer.stream_id)
    assert (stream.status, stream.started_at is not None) == ("streaming", True)
    assert prompt.created and prompt.answer.prompt_id == prompt.question.pk


def test_a_prompt_costs_seven_statements_without_savepoint_or_join(conversation, user):
    # As sockets and views read it: their user is a lazy object, the owner is not fetched.
    conversation = conversation_for(
        user=SimpleLazyObject(lambda: user), conversation_id=conversation.pk
    )
    with CaptureQueriesContext(connections["default"]) as queries:
        prompt = conversation_prompt(conversation=conversation, text="Hi")
    services.take_claim(str(prompt.answer.stream_id))
    statements = [q["sql"] for q in queries.captured_queries if q["sql"] not in TRANSACTION]
    # Two messages and the stream; the owner's lock and count; the title; the history.
    assert len(statements) == 7, statements
    assert not [sql for sql in statements if "SAVEPOINT" in sql or " JOIN " in sql]


def test_a_prompt_that_fails_after_its_first_row_leaves_no_row_and_no_claim(
    conversation, monkeypatch
):
    def broken_history(**kwargs):
        raise RuntimeError("the database refused the last statement")

    monkeypatch.setattr(chat_services, "conversation_history", broken_history)
    with pytest.raises(RuntimeError):
        conversation_prompt(conversation=conversation, text="Hi")
    assert (Message.objects.count(), Stream.objects.count()) == (0, 0)
    assert services.take_all_claims() == []


def test_a_client_id_used_already_returns_the_stored_prompt_and_stores_nothing(conversation):
    first = conversation_prompt(conversation=conversation, text="Hi", client_id="c-1")
    services.take_claim(str(first.answer.stream_id))
    again = conversation_prompt(conversation=conversation, text="Other text", client_id="c-1")
    assert not again.created
    assert (again.question.pk, again.answer.pk) == (first.question.pk, first.answer.pk)
    assert (Message.objects.count(), Stream.objects.count()) == (2, 1)
    assert services.take_all_claims() == []


def test_a_final_answer_holds_its_text_reasoning_finish_model_usage_and_duration(
    conversation, answer
):
    usage = {"prompt_tokens": 11, "completion_tokens": 7, "reasoning_tokens": 3}
    message = answer(
        conversation,
        "Hi",
        [("reasoning", "Thinking it over. "), ("text", "Yes. "), ("text", "Done.")],
        final=Status.DONE,
        report=Finish("length", "model-7", usage),
    )
    assert (message.text, message.reasoning, message.status) == (
        "Yes. Done.",
        "Thinking it over. ",
        "done",
    )
    assert (message.finish_reason, message.model, message.usage) == ("length", "model-7", usage)
    assert message.last_seq == 2
    assert message.duration is not None and message.duration >= 0


def test_the_llms_context_is_the_messages_text_without_reasoning_or_unfinished_answers(
    conversation, answer
):
    answer(
        conversation,
        "First",
        [("reasoning", "Private thoughts. "), ("text", "First answer.")],
        final=Status.DONE,
    )
    answer(conversation, "Second", ["Half an ans"], final=None)
    prompt = conversation_prompt(conversation=conversation, text="Third")
    services.take_claim(str(prompt.answer.stream_id))
    assert [(m.role, m.content) for m in prompt.history] == [
        ("user", "First"),
        ("assistant", "First answer."),
        ("user", "Second"),
        ("user", "Third"),
    ]
