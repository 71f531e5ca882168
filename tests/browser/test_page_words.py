"""What the conversation page tells its reader: the connection, the composer, the title
and the caret of an answer being written."""

from __future__ import annotations

from typing import Any

import pytest

from chatproject.chat.models import Conversation
from chatproject.chat.services import conversation_title
from tests.browser.conftest import last_answer_id, send_prompt, wait_for_text
from tests.chat.test_titles import TITLES

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"viewport": {"width": 390, "height": 700}, "is_mobile": True, "has_touch": True}
CONNECTION_TEXT = "() => document.querySelector('#connection').textContent.replace(/\\s+/g, ' ')"
HTTP_IN_VAIN = "(text) => window.chat.httpMode && /Offline, reconnecting in \\d+ s/.test(text())"


def test_send_is_disabled_while_the_composer_is_empty(chat_app):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    send = page.locator("#send")
    assert send.is_disabled()
    page.fill("#prompt", "A question")
    assert send.is_enabled()
    page.fill("#prompt", "   \n ")
    assert send.is_disabled()


def test_the_connection_says_offline_and_when_it_retries_while_nothing_updates(chat_app):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    chat_app.server.stop()
    # Past the failures after which the page goes on over HTTP, which fails too.
    page.wait_for_function(f"() => ({HTTP_IN_VAIN})({CONNECTION_TEXT})")
    assert "still updating" not in page.evaluate(CONNECTION_TEXT)
    assert "Live" not in page.evaluate(CONNECTION_TEXT)


def test_a_markdown_prompt_titles_the_conversation_in_plain_text(chat_app):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    prompt = "## Why does **the reload** keep `seq` [numbers](https://example.com/)?"
    send_prompt(page, prompt)
    page.wait_for_function(
        "() => !document.querySelector('#conversation-title').hasAttribute('data-untitled')"
    )
    shown = page.locator("#conversation-title").inner_text()
    assert shown == "Why does the reload keep seq numbers?"
    assert page.title() == f"{shown} · Chat"
    assert Conversation.objects.get(owner=chat_app.user).title == shown


def test_the_pages_title_rule_is_the_servers(chat_app):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    prompts = [prompt for prompt, _ in TITLES]
    shown = page.evaluate(
        "async (prompts) => { const { titleFrom } = await import('/static/chat/transcript.js');"
        " return prompts.map(titleFrom); }",
        prompts,
    )
    assert shown == [conversation_title(prompt) for prompt in prompts]


CARET_ON_LAST_LINE = """(id) => {
    const content = document.querySelector(`#message-${id} .content`);
    const caret = content.querySelector('.caret');
    const before = document.createRange();
    before.setStart(content, 0);
    before.setEndBefore(caret);
    const lines = [...before.getClientRects()].filter((rect) => rect.width > 0);
    const last = lines[lines.length - 1];
    const box = caret.getBoundingClientRect();
    const middle = (box.top + box.bottom) / 2;
    return last.top <= middle && middle <= last.bottom;
}"""


@pytest.mark.parametrize(
    ("reply", "last_words"),
    [
        ("A paragraph that runs over a few lines of a phone screen, as answers do.", "do."),
        ("Steps:\n\n- first item\n- the second item, still being written", "written"),
        ("> a quote that is being written", "written"),
        ("Code:\n\n```python\nprint('hello')\nx = 1\n", "= 1"),
    ],
    ids=["paragraph", "list", "quote", "code"],
)
def test_the_caret_stays_on_the_last_line_of_the_text_on_a_phone(
    chat_app: Any, fake_llm: Any, reply: str, last_words: str
):
    fake_llm.scenario = "hang"  # the reply, then silence before its last word: still open
    fake_llm.reply = f"{reply} unsent"
    fake_llm.hang_after = len(reply.split())
    page = chat_app.new_page(chat_app.new_context(**PHONE))
    chat_app.start_conversation(page)
    send_prompt(page, "Write slowly.")
    message_id = last_answer_id(page)
    wait_for_text(page, message_id, last_words)
    page.wait_for_selector(f"#message-{message_id}[data-status=streaming] .caret")
    assert page.evaluate(CARET_ON_LAST_LINE, message_id)
