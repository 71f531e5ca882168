"""The transcript page renders what the browser shows of an answer besides its text:
the reasoning as a "Thinking" block of plain text (open only while the model still
thinks) and a finished answer's quiet line (model, tokens, time)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from chatproject.chat.models import Message
from chatproject.chat.templatetags.chat_answers import answer_line, format_duration
from streaming import Finish
from streaming.core.lifecycle import Status

pytestmark = pytest.mark.django_db


def page_of(client, user, conversation) -> str:
    client.force_login(user)
    return client.get(f"/conversations/{conversation.pk}/").content.decode()


def thinking_block(page: str, message: Message) -> str:
    item = page[page.index(f'id="message-{message.pk}"') :]
    return item[item.index("<details") : item.index("</details>")]


def test_reasoning_still_streaming_renders_an_open_thinking_block(
    client, user, conversation, answer
):
    message = answer(conversation, "Hi", [("reasoning", "Weighing it up. ")], None)
    block = thinking_block(page_of(client, user, conversation), message)
    assert re.match(r'<details class="thinking" open>', block)
    assert "<summary>Thinking…</summary>" in block
    assert '<div class="thinking-text">Weighing it up. </div>' in block


def test_once_the_answer_begins_the_thinking_block_is_collapsed(client, user, conversation, answer):
    message = answer(
        conversation, "Hi", [("reasoning", "Weighing it up. "), ("text", "So: ")], None
    )
    block = thinking_block(page_of(client, user, conversation), message)
    assert block.startswith('<details class="thinking">')
    assert "<summary>Thinking</summary>" in block


def test_reasoning_is_rendered_as_text_never_as_html(client, user, conversation, answer):
    message = answer(
        conversation, "Hi", [("reasoning", "Is <b>x</b> **bold**?"), ("text", "No.")], Status.DONE
    )
    block = thinking_block(page_of(client, user, conversation), message)
    assert "Is &lt;b&gt;x&lt;/b&gt; **bold**?</div>" in block
    assert "<b>" not in block and "<strong>" not in block


def test_an_answer_without_reasoning_has_a_hidden_empty_thinking_block(
    client, user, conversation, answer
):
    message = answer(conversation, "Hi", [("text", "Plain.")], Status.DONE)
    block = thinking_block(page_of(client, user, conversation), message)
    assert block.startswith('<details class="thinking" hidden>')


def test_a_finished_answer_shows_its_model_tokens_and_time(client, user, conversation, answer):
    usage = {"prompt_tokens": 4, "completion_tokens": 12, "reasoning_tokens": 5}
    report = Finish(finish_reason="stop", model="m-7", usage=usage)
    message = answer(
        conversation, "Hi", [("reasoning", "Hm. "), ("text", "Yes.")], Status.DONE, report=report
    )
    Message.objects.filter(pk=message.pk).update(duration=2.34)
    page = page_of(client, user, conversation)
    assert '<p class="message-meta">m-7 · 12 tokens (5 reasoning) · 2.3 s</p>' in page


def test_an_answer_still_streaming_has_an_empty_quiet_line(client, user, conversation, answer):
    answer(conversation, "Hi", [("text", "So far.")], None)
    assert '<p class="message-meta"></p>' in page_of(client, user, conversation)


def test_an_answer_still_streaming_tells_the_page_how_long_ago_it_began(
    client, user, conversation, answer
):
    message = answer(conversation, "Hi", [("text", "So far.")], None)
    Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(seconds=42))
    page = page_of(client, user, conversation)
    elapsed = float(re.search(r'data-elapsed="([0-9.]+)"', page).group(1))
    assert 42 <= elapsed < 52


def test_a_finished_answer_is_not_timed_by_the_page(client, user, conversation, answer):
    answer(conversation, "Hi", [("text", "Done.")], Status.DONE)
    assert "data-elapsed" not in page_of(client, user, conversation)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0.0 s"), (0.05, "0.1 s"), (1.25, "1.3 s"), (9.96, "10 s"), (59.5, "1 min 0 s")],
)
def test_durations_read_as_people_say_them(seconds, shown):
    assert format_duration(seconds) == shown


def test_what_the_server_did_not_report_is_left_out_of_the_line():
    assert answer_line(None, None, 1.0) == "1.0 s"
    assert answer_line("m", {"completion_tokens": 1, "reasoning_tokens": 0}, None) == "m · 1 token"
    assert answer_line(None, None, None) == ""
