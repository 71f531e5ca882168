"""The chat services: a prompt stored and its stream claimed in one transaction, and a
final stream copied into its message."""

from __future__ import annotations

import asyncio
import re

import pytest
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.test.utils import CaptureQueriesContext
from django.utils.functional import SimpleLazyObject

from chatproject.chat import services as chat_services
from chatproject.chat.models import Conversation, Message
from chatproject.chat.selectors import conversation_for
from chatproject.chat.services import (
    Prompt,
    PromptRequest,
    aconversation_prompt,
    conversation_prompt,
    conversation_prompts,
)
from streaming import Finish, services
from streaming.core.lifecycle import Status
from streaming.models import Stream

# Transactional: the prompt's transaction must be the outermost one, as in production,
# so that its COMMIT is its own and its on-commit hooks run.
pytestmark = pytest.mark.django_db(transaction=True)

TRANSACTION = {"BEGIN", "BEGIN IMMEDIATE", "COMMIT"}  # PostgreSQL, SQLite
WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|SELECT .* FOR UPDATE)", re.IGNORECASE | re.DOTALL)


@pytest.fixture
def commits(monkeypatch) -> list[str]:
    """Every COMMIT from now on, whatever thread's connection runs it (by alias)."""
    seen: list[str] = []
    real_commit = BaseDatabaseWrapper.commit

    def counted(connection: BaseDatabaseWrapper) -> None:
        seen.append(connection.alias)
        real_commit(connection)

    monkeypatch.setattr(BaseDatabaseWrapper, "commit", counted)
    return seen


def test_a_prompts_rows_and_its_streams_claim_commit_in_one_transaction(conversation, commits):
    connection = connections["default"]
    writes: list[tuple[str, bool]] = []

    def record(execute, sql, params, many, context):
        if WRITE.match(sql):
            writes.append((sql.split()[0].upper(), connection.in_atomic_block))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        prompt = conversation_prompt(conversation=conversation, text="Hi", client_id="c-1")
    services.take_claim(str(prompt.answer.stream_id))

    assert commits == ["default"]
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
    def broken_history(*args, **kwargs):
        raise RuntimeError("the database refused the last statement")

    monkeypatch.setattr(chat_services, "conversation_histories", broken_history)
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


# --- prompts stored together -------------------------------------------------------------


@pytest.fixture
def conversations(django_user_model):
    """Three users' untitled conversations."""
    users = [django_user_model.objects.create_user(f"u{n}") for n in range(3)]
    return [Conversation.objects.create(owner=u) for u in users]


def stored(results):
    """The prompts of ``results``, their claims taken (nobody drives them here)."""
    for result in results:
        if isinstance(result, Prompt) and result.created:
            services.take_claim(str(result.answer.stream_id))
    return results


def history_of(prompt):
    return [(m.role, m.content) for m in prompt.history]


def test_prompts_stored_together_commit_in_one_transaction(conversations, commits):
    requests = [PromptRequest(c, f"Question {n}") for n, c in enumerate(conversations)]
    results = stored(conversation_prompts(requests))
    assert commits == ["default"]
    assert [r.question.text for r in results] == ["Question 0", "Question 1", "Question 2"]
    assert [r.answer.conversation_id for r in results] == [c.pk for c in conversations]
    assert all(r.answer.prompt_id == r.question.pk for r in results)
    assert [history_of(r) for r in results] == [[("user", f"Question {n}")] for n in range(3)]
    assert Stream.objects.filter(status="streaming").count() == 3


def test_two_prompts_of_one_conversation_stored_together_get_the_histories_of_one_after_the_other(
    conversation,
):
    requests = [PromptRequest(conversation, "One"), PromptRequest(conversation, "Two")]
    first, second = stored(conversation_prompts(requests))
    assert history_of(first) == [("user", "One")]
    assert history_of(second) == [("user", "One"), ("user", "Two")]  # the first answer streams


def test_a_refused_prompt_among_others_stores_nothing_and_gets_its_error(conversations, settings):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 1
    busy = conversations[1]
    stored([conversation_prompt(conversation=busy, text="Already streaming")])
    requests = [PromptRequest(conversations[0], "Fine"), PromptRequest(busy, "One too many"),
                PromptRequest(conversations[2], "   ")]  # fmt: skip
    results = stored(conversation_prompts(requests))
    assert isinstance(results[0], Prompt) and results[0].created
    assert [r.code for r in results[1:]] == ["too_many_active", "prompt_empty"]
    assert not Message.objects.filter(text__in=["One too many", "   "]).exists()
    assert Stream.objects.count() == 2


def test_one_client_id_twice_in_prompts_stored_together_is_stored_once(conversation):
    requests = [PromptRequest(conversation, "Hi", "c-1"), PromptRequest(conversation, "Hi", "c-1")]
    first, again = stored(conversation_prompts(requests))
    assert (first.created, again.created) == (True, False)
    assert (again.question.pk, again.answer.pk) == (first.question.pk, first.answer.pk)
    assert Message.objects.count() == 2


def test_the_title_comes_from_the_first_prompt_even_through_a_stale_copy(user):
    conversation = Conversation.objects.create(owner=user)
    stale = Conversation.objects.get(pk=conversation.pk)
    stored([conversation_prompt(conversation=conversation, text="The first question")])
    stored([conversation_prompt(conversation=stale, text="A later question")])
    conversation.refresh_from_db()
    assert conversation.title == "The first question"


async def test_prompts_arriving_together_are_stored_in_one_transaction(conversations, commits):
    prompts = await asyncio.gather(
        *(aconversation_prompt(conversation=c, text=f"Q{n}") for n, c in enumerate(conversations))
    )
    stored(prompts)
    assert commits == ["default"]
    assert [p.question.text for p in prompts] == ["Q0", "Q1", "Q2"]
