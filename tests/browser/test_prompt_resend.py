"""A prompt whose socket dropped before its messages came back is sent again after the
reconnect, with the same client id: the server stores and answers it exactly once,
whether the first copy reached it or not.

Playwright's websocket routing stands between the page and daphne: the first socket
closes right after the page sends its prompt (handing it to the server first, or not);
the sockets after it pass through."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from chatproject.chat.models import Message
from tests.browser.conftest import last_answer_id, send_prompt, shown_text, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NOTHING_PENDING = "() => window.chat.pending.size === 0"


class DroppingProxy:
    """Routes the page's websockets to daphne. The first socket that carries a prompt is
    closed as soon as the page sends it; with ``deliver`` the server gets the prompt
    first (and its replies are lost), without, the prompt is lost with the socket."""

    def __init__(self, page: Any, *, deliver: bool) -> None:
        self.deliver = deliver
        self.prompts: list[dict[str, Any]] = []  # every prompt frame the page sent
        self.dropped = False
        page.route_web_socket(re.compile(r"/ws/"), self.route)

    def route(self, ws: Any) -> None:
        server = ws.connect_to_server()
        state = {"cut": False}

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "prompt":
                self.prompts.append(frame)
                if not self.dropped:
                    self.dropped = state["cut"] = True
                    if self.deliver:
                        server.send(message)
                    else:
                        server.close()
                    ws.close()
                    return
            server.send(message)

        def from_server(message: str | bytes) -> None:
            if state["cut"]:
                server.close()  # the server has the prompt (it replied): the socket goes
                return
            ws.send(message)

        ws.on_message(from_page)
        server.on_message(from_server)


def test_a_prompt_lost_with_its_socket_is_sent_again_after_the_reconnect(chat_app, fake_llm):
    page = chat_app.new_page(chat_app.new_context())
    proxy = DroppingProxy(page, deliver=False)
    chat_app.start_conversation(page)

    send_prompt(page, "Are you there?")
    message_id = last_answer_id(page)
    assert wait_status(page, message_id) == "done"
    page.wait_for_function(NOTHING_PENDING)

    first, again = proxy.prompts
    assert again == first and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", first["client_id"])
    question = Message.objects.get(role="user")
    assert (question.text, question.client_id) == ("Are you there?", first["client_id"])
    assert shown_text(page, message_id) == fake_llm.reply
    assert fake_llm.request_count == 1


def test_a_prompt_sent_again_after_a_reconnect_is_stored_and_answered_once(chat_app, fake_llm):
    page = chat_app.new_page(chat_app.new_context())
    proxy = DroppingProxy(page, deliver=True)
    chat_app.start_conversation(page)

    send_prompt(page, "Only once, please.")
    message_id = last_answer_id(page)
    assert wait_status(page, message_id) == "done"
    page.wait_for_function(NOTHING_PENDING)

    first, again = proxy.prompts  # the server had the first: the second stored nothing
    assert again == first
    assert Message.objects.filter(role="user").count() == 1
    assert Message.objects.filter(role="assistant").count() == 1
    assert page.locator("li.message-user").count() == 1
    assert page.locator("li.message-assistant").count() == 1
    assert shown_text(page, message_id) == fake_llm.reply
    assert fake_llm.request_count == 1


def test_a_prompt_waiting_for_its_messages_says_so_under_the_composer(chat_app, fake_llm):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    hint = page.locator("#composer-hint")
    idle = hint.inner_text()
    # Hold the page's socket reads so the prompt's messages cannot arrive yet.
    page.evaluate(
        "() => { window.held = []; const real = window.chat.onFrame.bind(window.chat);"
        " window.chat.onFrame = (data) => window.held.push(data);"
        " window.release = () => { window.chat.onFrame = real; window.held.forEach(real); }; }"
    )
    send_prompt(page, "Hello?")
    page.wait_for_function("() => window.held.length > 0")
    assert hint.inner_text() == "Sending…"
    page.evaluate("() => window.release()")
    page.wait_for_function(NOTHING_PENDING)
    assert hint.inner_text() == idle
    assert wait_status(page, last_answer_id(page)) == "done"
