"""What the page shows of an answer besides its text: the model's reasoning in a
"Thinking" block above it (live while it streams, collapsed once the answer starts,
plain text always), and the quiet line of a finished answer (model, tokens, time), the
same live and after a reload."""

from __future__ import annotations

import re
from typing import Any

import pytest

from chatproject.chat.models import Message
from chatproject.chat.templatetags.chat_answers import answer_line, format_duration
from tests.browser.conftest import answer, last_answer_id, send_prompt, sentences, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

THOUGHTS = " ".join(f"Thought {n} about the question." for n in range(1, 16))


def thinking(page: Any, message_id: int) -> Any:
    return answer(page, message_id).locator("details.thinking")


def reasoning_of(page: Any, message_id: int) -> str | None:
    return page.evaluate("(id) => window.chat.reasoningOf(id)", message_id)


def wait_for_thinking(page: Any, message_id: int, needle: str) -> None:
    """Until the Thinking block of the answer shows ``needle``."""
    page.wait_for_function(
        "([id, needle]) => (document.querySelector(`#message-${id} .thinking-text`)"
        "?.textContent || '').includes(needle)",
        arg=[message_id, needle],
    )


@pytest.fixture
def thinking_llm(fake_llm: Any) -> Any:
    """The fake LLM as a reasoning model: THOUGHTS first, slowly enough to watch."""
    fake_llm.scenario = "reasoning_content"
    fake_llm.reasoning_reply = THOUGHTS
    fake_llm.reply = "The answer, after some thought."
    fake_llm.token_delay = 0.05
    return fake_llm


def test_the_thinking_block_is_open_and_live_while_the_model_reasons(chat_app, thinking_llm):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    send_prompt(page, "Think first.")
    message_id = last_answer_id(page)

    wait_for_thinking(page, message_id, "Thought 3 about the question.")
    block = thinking(page, message_id)
    assert block.get_attribute("open") is not None
    assert block.locator("summary").inner_text() == "Thinking…"
    assert page.evaluate("(id) => window.chat.textOf(id)", message_id) == ""  # no answer yet
    wait_for_thinking(page, message_id, "Thought 9 about the question.")  # it grows
    assert block.get_attribute("open") is not None


def test_the_thinking_block_collapses_when_the_answer_starts(chat_app, thinking_llm):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    send_prompt(page, "Think first.")
    message_id = last_answer_id(page)
    page.wait_for_selector(f"#message-{message_id} details.thinking[open]")

    page.wait_for_function("(id) => (window.chat.textOf(id) || '') !== ''", arg=message_id)
    block = thinking(page, message_id)
    assert block.get_attribute("open") is None
    assert block.locator("summary").inner_text() == "Thinking"
    assert reasoning_of(page, message_id) == THOUGHTS
    assert wait_status(page, message_id) == "done"
    assert block.is_visible() and block.get_attribute("open") is None


def test_the_thinking_block_is_there_collapsed_after_a_reload(chat_app, thinking_llm):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    send_prompt(page, "Think first.")
    message_id = last_answer_id(page)
    assert wait_status(page, message_id) == "done"
    assert Message.objects.get(pk=message_id).reasoning == THOUGHTS

    page.reload()
    block = thinking(page, message_id)
    assert block.is_visible()
    assert block.get_attribute("open") is None
    block.locator("summary").click()  # the reader opens it
    assert block.locator(".thinking-text").inner_text() == THOUGHTS


def test_a_reload_while_the_model_thinks_shows_the_block_open_and_live(chat_app, thinking_llm):
    thinking_llm.token_delay = 0.08  # about 6 s of thinking
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    send_prompt(page, "Think first.")
    message_id = last_answer_id(page)
    wait_for_thinking(page, message_id, "Thought 2 about the question.")

    html = page.reload().text()
    rendered = html[html.index(f'id="message-{message_id}"') :]
    assert rendered[rendered.index("<details") :].startswith('<details class="thinking" open>')
    block = thinking(page, message_id)
    assert block.get_attribute("open") is not None
    wait_for_thinking(page, message_id, "Thought 12 about the question.")  # live again
    page.wait_for_function("(id) => (window.chat.textOf(id) || '') !== ''", arg=message_id)
    assert block.get_attribute("open") is None
    assert wait_status(page, message_id) == "done"
    assert reasoning_of(page, message_id) == THOUGHTS


def test_reasoning_markup_shows_as_text_live_and_after_a_reload(chat_app, thinking_llm):
    thinking_llm.reasoning_reply = "Is <b>x</b> bold? <img src=x onerror=alert(1)> No."
    thinking_llm.token_delay = 0.01
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    send_prompt(page, "Think in HTML.")
    message_id = last_answer_id(page)
    assert wait_status(page, message_id) == "done"

    text = thinking(page, message_id).locator(".thinking-text")
    assert text.text_content() == thinking_llm.reasoning_reply
    assert text.locator("b, img").count() == 0
    page.reload()  # now the server's rendering
    assert text.text_content() == thinking_llm.reasoning_reply
    assert text.locator("b, img").count() == 0
    assert chat_app.dialogs == []


def test_an_answer_without_reasoning_has_no_thinking_block(chat_app, fake_llm):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    send_prompt(page, "Just answer.")
    message_id = last_answer_id(page)
    assert wait_status(page, message_id) == "done"
    assert thinking(page, message_id).is_hidden()
    page.reload()
    assert thinking(page, message_id).is_hidden()


META = "(id) => document.querySelector(`#message-${id} .message-meta`).textContent"


def seconds_in(line: str) -> float:
    """The time at the end of a quiet line ("… · 1.3 s")."""
    return float(re.fullmatch(r".* · ([0-9.]+) s", line).group(1))


def test_a_finished_answer_shows_its_model_tokens_and_time_and_a_reload_the_same(
    chat_app, thinking_llm
):
    thinking_llm.token_delay = 0.02
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    send_prompt(page, "Think first.")
    message_id = last_answer_id(page)
    meta = answer(page, message_id).locator(".message-meta")
    assert meta.is_hidden()  # nothing while it streams
    assert wait_status(page, message_id) == "done"

    message = Message.objects.get(pk=message_id)
    server_line = answer_line(message.model, message.usage, message.duration)
    assert message.reasoning_tokens and f"({message.reasoning_tokens} reasoning)" in server_line
    live = page.evaluate(META, message_id)
    # The model and tokens from the final status; the time the page measured itself.
    assert live.rsplit(" · ", 1)[0] == server_line.rsplit(" · ", 1)[0]
    assert abs(seconds_in(live) - message.duration) <= 0.3
    page.reload()
    assert meta.inner_text() == server_line  # the server's record


def test_an_answer_continued_after_a_reload_is_timed_from_its_start(chat_app, fake_llm):
    fake_llm.reply = sentences(20)
    fake_llm.token_delay = 0.04
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    send_prompt(page, "Count to twenty.")
    message_id = last_answer_id(page)
    page.wait_for_function(
        "(id) => (window.chat.textOf(id) || '').includes('Sentence 5 ')", arg=message_id
    )
    page.reload()
    assert wait_status(page, message_id) == "done"

    duration = Message.objects.get(pk=message_id).duration
    assert duration > 2  # the reload came well after the start
    assert abs(seconds_in(page.evaluate(META, message_id)) - duration) <= 0.5


DURATIONS = [0, 0.04, 0.05, 0.25, 1.25, 1.35, 9.94, 9.95, 9.96, 10.4, 10.5, 59.4, 59.5, 61, 3725]
USAGES = [
    ("gpt-x", {"prompt_tokens": 3, "completion_tokens": 12, "reasoning_tokens": 4}, 2.5),
    ("gpt-x", {"prompt_tokens": 3, "completion_tokens": 1, "reasoning_tokens": 0}, None),
    (None, {"prompt_tokens": None, "completion_tokens": None, "reasoning_tokens": None}, 1.0),
    ("m", None, None),
    (None, None, None),
]


def test_the_pages_answer_line_is_the_servers(chat_app):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    shown = page.evaluate(
        """async ([durations, usages]) => {
            const { answerMeta, formatDuration } = await import('/static/chat/transcript.js');
            const line = ([model, usage, duration]) => answerMeta({ model, usage, duration });
            return [durations.map(formatDuration), usages.map(line)];
        }""",
        [DURATIONS, USAGES],
    )
    assert shown == [
        [format_duration(d) for d in DURATIONS],
        [answer_line(*usage) for usage in USAGES],
    ]
