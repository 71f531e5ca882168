"""Hostile text in a prompt or a reply stays text: live (tokens and chunks) and after a
reload (the server's render). No dialog opens, no element is injected."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import last_answer_id, send_prompt, wait_live, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAYLOADS = (
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
)
PROMPT = "Try these: " + " ".join(PAYLOADS)
REPLY = (
    "Here they are, inline: "
    + " ".join(PAYLOADS)
    + "\n\nAnd on lines of their own:\n\n"
    + "\n\n".join(PAYLOADS)
    + '\n\n[click](JaVaScRiPt:alert(2)) <a href="javascript:alert(3)">a</a> **still bold**\n'
)

INJECTED = (
    "#transcript script, #transcript img, #transcript iframe, #transcript svg, "
    "#transcript [onerror], #transcript [onclick], #transcript [onload], "
    '#transcript a[href^="javascript" i]'
)


def assert_inert(page: Any) -> None:
    assert page.locator(INJECTED).count() == 0
    transcript = page.locator("#transcript").inner_text()
    for payload in PAYLOADS:
        # Shown as the characters the user and the model wrote (the link stays text:
        # markdown-it refuses javascript: links).
        assert transcript.count(payload) >= 2, payload
    assert page.locator("#transcript li.message-assistant strong").inner_text() == "still bold"


def test_script_markup_in_prompt_and_reply_never_runs(chat_app, fake_llm):
    fake_llm.reply = REPLY
    context = chat_app.new_context()
    sender, watcher = chat_app.new_page(context), chat_app.new_page(context)
    url = chat_app.start_conversation(sender)
    chat_app.open(watcher, url)

    send_prompt(sender, PROMPT)
    message_id = last_answer_id(sender)
    wait_status(sender, message_id)
    wait_status(watcher, message_id)
    for page in (sender, watcher):  # rendered from tokens, and from chunks
        assert_inert(page)

    sender.reload()  # rendered by the server
    wait_live(sender)
    assert_inert(sender)
    assert chat_app.dialogs == []
