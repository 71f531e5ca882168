"""The conversation page with real websockets: live answers in several tabs, reloads,
stop, failures and the HTTP fallback, each checked against what the database holds."""

from __future__ import annotations

import re
from typing import Any

import pytest

from chatproject.chat.models import Message
from streaming.models import Stream
from tests.browser.conftest import (
    answer,
    last_answer_id,
    send_prompt,
    sentences,
    shown_text,
    wait_for_text,
    wait_live,
    wait_status,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def count_frames(page: Any) -> dict[str, int]:
    """Count the websocket frames a tab receives, by type."""
    counts: dict[str, int] = {}

    def on_frame(payload: str | bytes) -> None:
        kind = re.search(r'"type":\s*"(\w+)"', str(payload))
        if kind:
            counts[kind.group(1)] = counts.get(kind.group(1), 0) + 1

    page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    return counts


def test_two_tabs_of_one_user_show_the_same_answer(chat_app, fake_llm):
    fake_llm.reply = sentences(25)
    context = chat_app.new_context()
    tab_a, tab_b = chat_app.new_page(context), chat_app.new_page(context)
    frames_a, frames_b = count_frames(tab_a), count_frames(tab_b)
    url = chat_app.start_conversation(tab_a)
    chat_app.open(tab_b, url)

    send_prompt(tab_a, "Tell me twenty-five sentences.")
    message_id = last_answer_id(tab_a)
    # Tab B did not send anything, yet watches the same answer being written.
    tab_b.wait_for_selector(f"#message-{message_id}[data-status=streaming]")
    wait_for_text(tab_b, message_id, "Sentence 3 ")
    assert wait_status(tab_b, message_id) == "done"
    assert wait_status(tab_a, message_id) == "done"

    db_text = Message.objects.get(pk=message_id).text
    assert db_text == fake_llm.reply
    assert shown_text(tab_a, message_id) == db_text
    assert shown_text(tab_b, message_id) == db_text
    html_a = answer(tab_a, message_id).locator(".content").inner_html()
    assert html_a == answer(tab_b, message_id).locator(".content").inner_html()
    # The sender rendered tokens as they came; the other tab only saved chunks.
    assert frames_a.get("token", 0) > 0
    assert frames_b.get("token", 0) == 0
    assert frames_b.get("chunk", 0) > 0
    assert (
        tab_b.locator("li.message-user .content").inner_text() == "Tell me twenty-five sentences."
    )


def test_reloading_mid_answer_continues_it_without_gaps_or_repeats(chat_app, fake_llm):
    fake_llm.reply = sentences(30)
    fake_llm.token_delay = 0.04
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)

    send_prompt(page, "Count to thirty.")
    message_id = last_answer_id(page)
    wait_for_text(page, message_id, "Sentence 6 ")
    response = page.reload()
    # The server rendered the answer still streaming, with its saved text and seq.
    html = response.text()
    assert re.search(rf'id="message-{message_id}"[^>]*data-status="streaming"', html)
    wait_live(page)
    assert wait_status(page, message_id) == "done"

    db_text = Message.objects.get(pk=message_id).text
    assert db_text == fake_llm.reply
    assert shown_text(page, message_id) == db_text
    visible = answer(page, message_id).locator(".content").inner_text()
    for n in range(1, 31):
        assert visible.count(f"Sentence {n} of") == 1, f"sentence {n} in {visible!r}"


def test_stop_keeps_the_partial_answer_and_cancels_the_stream(chat_app, fake_llm):
    fake_llm.reply = sentences(60)
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)

    send_prompt(page, "Talk for a long time.")
    message_id = last_answer_id(page)
    wait_for_text(page, message_id, "Sentence 3 ")
    page.click("#stop")
    assert wait_status(page, message_id) == "cancelled"

    assert answer(page, message_id).locator(".status-label").inner_text() == "Stopped"
    assert page.locator("#stop").is_hidden()
    message = Message.objects.get(pk=message_id)
    assert Stream.objects.get(pk=message.stream_id).status == "cancelled"
    assert message.status == "cancelled"
    kept = shown_text(page, message_id)
    assert kept == message.text
    assert "Sentence 3 " in kept
    assert fake_llm.reply.startswith(kept) and len(kept) < len(fake_llm.reply)


def test_failed_answer_shows_error_keeps_text_and_retry_sends_prompt_again(chat_app, fake_llm):
    fake_llm.scenario = "cut"  # a few tokens, then the connection drops
    fake_llm.cut_after = 4
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)

    send_prompt(page, "Please answer.")
    failed_id = last_answer_id(page)
    assert wait_status(page, failed_id) == "error"
    failed = answer(page, failed_id)
    assert failed.locator(".status-label").inner_text() == "Error"
    kept = shown_text(page, failed_id)
    assert kept == Message.objects.get(pk=failed_id).text
    assert kept and fake_llm.reply.startswith(kept)

    fake_llm.scenario = "normal"
    failed.locator(".retry").click()
    retried_id = last_answer_id(page, after=failed_id)
    assert wait_status(page, retried_id) == "done"
    assert shown_text(page, retried_id) == fake_llm.reply
    prompts = page.locator("li.message-user .content").all_inner_texts()
    assert prompts == ["Please answer.", "Please answer."]
    # The failure stays on screen, text and all, after a reload (server render).
    page.reload()
    assert answer(page, failed_id).get_attribute("data-status") == "error"
    assert answer(page, failed_id).locator(".retry").is_visible()


LIMITS = {"CHAT_PROMPT_MAX_CHARS": "40", "STREAMING_MAX_ACTIVE_PER_OWNER": "1"}


@pytest.mark.parametrize("chat_app", [LIMITS], indirect=True)
def test_refused_prompts_show_the_error_and_give_the_text_back(chat_app, fake_llm):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    notice = page.locator("#notice")

    too_long = "x" * 41
    # A script can put in what maxlength stops a typist from entering.
    page.evaluate("(text) => { document.querySelector('#prompt').value = text }", too_long)
    page.press("#prompt", "Enter")
    page.wait_for_selector("#notice:not([hidden])")
    assert notice.get_attribute("data-code") == "prompt_too_long"
    assert "longer than 40 characters" in notice.inner_text()
    assert page.input_value("#prompt") == too_long
    assert page.locator("li.message").count() == 0

    fake_llm.scenario, fake_llm.hang_after = "hang", 2  # the first answer stays open
    send_prompt(page, "First question.")
    first_id = last_answer_id(page)
    wait_for_text(page, first_id, " ")
    assert notice.is_hidden()
    send_prompt(page, "Second question.")
    page.wait_for_selector("#notice[data-code=too_many_active]:not([hidden])")
    assert "wait for one to finish" in notice.inner_text()
    assert page.input_value("#prompt") == "Second question."
    assert page.locator("li.message").count() == 2

    page.click("#stop")
    assert wait_status(page, first_id) == "cancelled"


def test_without_websocket_the_page_follows_the_answer_over_http(chat_app, fake_llm):
    fake_llm.reply = sentences(20)
    fake_llm.token_delay = 0.05
    context = chat_app.new_context()
    sender = chat_app.new_page(context)
    url = chat_app.start_conversation(sender)
    send_prompt(sender, "Go on.")
    message_id = last_answer_id(sender)
    wait_for_text(sender, message_id, "Sentence 2 ")

    # A second tab whose websocket never gets through (a proxy that refuses upgrades).
    offline = chat_app.new_page(context)
    offline.route_web_socket(re.compile(r"/ws/"), lambda ws: ws.close())
    event_streams: list[str] = []
    offline.on("request", lambda r: "/events/" in r.url and event_streams.append(r.url))
    offline.goto(url)
    offline.wait_for_selector("#connection[data-state=http]", timeout=15_000)
    assert offline.locator("#connection .connection-label").inner_text() == "Live over HTTP"
    assert wait_status(offline, message_id) == "done"

    db_text = Message.objects.get(pk=message_id).text
    assert db_text == fake_llm.reply
    assert shown_text(offline, message_id) == db_text
    assert event_streams  # Server-Sent Events, not polling
    offline.fill("#prompt", "A question over HTTP")
    assert offline.locator("#send").is_enabled()  # prompts go as POSTs meanwhile
