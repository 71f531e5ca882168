"""The pages work under their Content-Security-Policy: chromium reports no violation
(a refused inline script or style, or a source of another origin) on any of them."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model

from chatproject.chat.models import Message
from tests.browser.conftest import PASSWORD, last_answer_id, send_prompt, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def watch_csp(page: Any) -> list[str]:
    """The CSP violations chromium reports on this tab's console, as they come."""
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return violations


def log_in(chat_app: Any, page: Any) -> None:
    page.goto(f"{chat_app.url}/accounts/login/")
    page.fill("#id_username", chat_app.user.username)
    page.fill("#id_password", PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_url(f"{chat_app.url}/")
    page.wait_for_load_state("load")


def test_the_login_and_home_pages_break_no_csp_rule(chat_app):
    page = chat_app.new_page(chat_app.browser.new_context())
    violations = watch_csp(page)
    log_in(chat_app, page)
    assert page.locator("#new-chat").is_visible()
    assert violations == []


def test_a_streamed_answer_breaks_no_csp_rule(chat_app, fake_llm):
    fake_llm.reply = "A **bold** answer with `code` and [a link](https://example.com/)."
    page = chat_app.new_page(chat_app.new_context())
    violations = watch_csp(page)
    chat_app.start_conversation(page)
    send_prompt(page, "Answer in Markdown, please.")
    assert wait_status(page, last_answer_id(page)) == "done"
    assert page.locator("li.message-assistant strong").inner_text() == "bold"
    assert violations == []


def test_the_admin_stream_list_and_detail_break_no_csp_rule(chat_app, fake_llm):
    get_user_model().objects.filter(pk=chat_app.user.pk).update(is_staff=True, is_superuser=True)
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)
    send_prompt(page, "Something for the admin to show.")
    message_id = last_answer_id(page)
    wait_status(page, message_id)
    stream_id = Message.objects.get(pk=message_id).stream_id

    violations = watch_csp(page)
    page.goto(f"{chat_app.url}/admin/streaming/stream/")
    page.wait_for_selector("#result_list")
    page.goto(f"{chat_app.url}/admin/streaming/stream/{stream_id}/change/")
    page.wait_for_selector(".stream-text")
    assert violations == []
