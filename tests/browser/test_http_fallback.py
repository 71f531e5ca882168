"""The conversation page when its websocket cannot connect (a proxy that refuses
upgrades; here Playwright's websocket routing closes every one): answers over
Server-Sent Events, prompts as POSTs whose response drives the answer, Stop as a POST.
Each answer is checked against what the database holds."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from chatproject.chat.models import Conversation, Message
from streaming.models import Stream
from tests.browser.conftest import (
    answer,
    last_answer_id,
    send_prompt,
    sentences,
    shown_text,
    wait_for_text,
    wait_status,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

#: The fallback starts after three failed connects (about 3 s of backoff).
FALLBACK_MS = 15_000
DRIVING_SHOWS = """([id, needle]) => {
    const message = window.chat.transcript.messages.get(id);
    const s = message && window.chat.streams.get(message.streamId);
    return Boolean(s && s.driving && s.shown.includes(needle));
}"""


def offline_page(chat_app: Any, context: Any | None = None) -> tuple[Any, list[str]]:
    """A tab whose websockets never get through, on a new conversation, once it goes on
    over HTTP; and the URLs of the event streams it opens."""
    page = chat_app.new_page(context or chat_app.new_context())
    page.route_web_socket(re.compile(r"/ws/"), lambda ws: ws.close())
    event_streams: list[str] = []
    page.on("request", lambda r: "/events/" in r.url and event_streams.append(r.url))
    conversation = Conversation.objects.create(owner=chat_app.user)
    page.goto(f"{chat_app.url}/conversations/{conversation.pk}/")
    wait_over_http(page)
    return page, event_streams


def wait_over_http(page: Any) -> None:
    page.wait_for_selector("#connection[data-state=http]", timeout=FALLBACK_MS)


def is_prompt_post(response: Any) -> bool:
    return response.request.method == "POST" and response.url.endswith("/messages/")


def assert_each_sentence_once(page: Any, message_id: int, count: int) -> None:
    visible = answer(page, message_id).locator(".content").inner_text()
    for n in range(1, count + 1):
        assert visible.count(f"Sentence {n} of") == 1, f"sentence {n} in {visible!r}"


def test_without_websocket_a_prompt_is_answered_live_over_http(chat_app, fake_llm):
    fake_llm.reply = sentences(20)
    page, _ = offline_page(chat_app)
    assert page.locator("#connection .connection-label").inner_text() == "Live over HTTP"

    with page.expect_response(is_prompt_post) as posted:
        send_prompt(page, "Answer over HTTP.")
    message_id = last_answer_id(page)
    # The POST's response drives the answer: its tokens show ahead of the saved text.
    page.wait_for_function(DRIVING_SHOWS, arg=[message_id, "Sentence 2 "])
    assert wait_status(page, message_id) == "done"

    body = posted.value.text()
    assert posted.value.headers["content-type"].startswith("text/event-stream")
    assert body.count("event: message") == 2 and "event: token" in body
    assert Message.objects.get(pk=message_id).text == fake_llm.reply
    assert shown_text(page, message_id) == fake_llm.reply
    assert page.locator("li.message-user .content").all_inner_texts() == ["Answer over HTTP."]
    assert fake_llm.request_count == 1


def test_reloading_mid_answer_without_websocket_continues_it_over_event_source(chat_app, fake_llm):
    fake_llm.reply = sentences(40)
    fake_llm.token_delay = 0.05
    page, event_streams = offline_page(chat_app)
    send_prompt(page, "Count to forty.")
    message_id = last_answer_id(page)
    wait_for_text(page, message_id, "Sentence 4 ")

    page.reload()
    wait_over_http(page)
    assert answer(page, message_id).get_attribute("data-status") == "streaming"
    assert wait_status(page, message_id) == "done"

    db_text = Message.objects.get(pk=message_id).text
    assert db_text == fake_llm.reply
    assert shown_text(page, message_id) == db_text
    assert_each_sentence_once(page, message_id, 40)
    # Followed from the seq the server rendered the page with, not from the start.
    assert event_streams and int(parse_qs(urlparse(event_streams[0]).query)["after"][0]) >= 0


def test_stop_without_websocket_ends_the_answer_stopped_with_its_partial_text(chat_app, fake_llm):
    fake_llm.reply = sentences(60)
    page, _ = offline_page(chat_app)
    send_prompt(page, "Talk for a long time.")
    message_id = last_answer_id(page)
    wait_for_text(page, message_id, "Sentence 3 ")

    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/cancel/")):
        page.click("#stop")
    assert wait_status(page, message_id) == "cancelled"

    assert answer(page, message_id).locator(".status-label").inner_text() == "Stopped"
    assert page.locator("#stop").is_hidden()
    message = Message.objects.get(pk=message_id)
    assert Stream.objects.get(pk=message.stream_id).status == "cancelled"
    kept = shown_text(page, message_id)
    assert kept == message.text
    assert "Sentence 3 " in kept
    assert fake_llm.reply.startswith(kept) and len(kept) < len(fake_llm.reply)


@pytest.mark.parametrize("chat_app", [{"STREAMING_SSE_MAX_SECONDS": "2"}], indirect=True)
def test_responses_the_server_ends_early_continue_to_the_exact_text(chat_app, fake_llm):
    """The POST's response and each event stream end after 2 s: the page continues the
    answer over an EventSource from its last seq, which the browser reconnects with
    Last-Event-ID after each end."""
    fake_llm.reply = sentences(30)
    fake_llm.token_delay = 0.05  # about 8 s: four responses or more
    page, event_streams = offline_page(chat_app)
    send_prompt(page, "Count to thirty.")
    message_id = last_answer_id(page)
    assert wait_status(page, message_id) == "done"

    db_text = Message.objects.get(pk=message_id).text
    assert db_text == fake_llm.reply
    assert shown_text(page, message_id) == db_text
    assert_each_sentence_once(page, message_id, 30)
    assert len(event_streams) >= 2
    # The first continues after what the POST's response delivered; the later ones are
    # the browser's reconnects of that same EventSource (the same URL).
    assert int(parse_qs(urlparse(event_streams[0]).query)["after"][0]) >= 0
    assert set(event_streams[1:]) <= {event_streams[0]}


@pytest.mark.parametrize("chat_app", [{"CHAT_PROMPT_MAX_CHARS": "40"}], indirect=True)
def test_a_prompt_refused_over_http_comes_back_to_the_composer(chat_app, fake_llm):
    page, _ = offline_page(chat_app)
    too_long = "x" * 41
    # A script can put in what maxlength stops a typist from entering.
    page.evaluate("(text) => { document.querySelector('#prompt').value = text }", too_long)
    page.press("#prompt", "Enter")
    page.wait_for_selector("#notice[data-code=prompt_too_long]:not([hidden])")
    assert "longer than 40 characters" in page.locator("#notice").inner_text()
    assert page.input_value("#prompt") == too_long
    assert page.locator("li.message").count() == 0
    assert page.evaluate("() => window.chat.pending.size") == 0
