"""The admin's change lists are readable on a 1280 px screen: every column is on screen
(none cut off behind a horizontal scroll) and no time wraps onto a second line."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model

from chatproject.chat.models import Conversation
from chatproject.chat.services import conversation_prompt

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DESKTOP = {"viewport": {"width": 1280, "height": 800}}
LONG_PROMPT = (
    "How does a reload resume a streaming answer when the server restarts in the middle "
    "of writing it, and what does the reader see meanwhile?"
)
CHANGE_LISTS = ["streaming/stream", "chat/conversation", "chat/message"]

# For each cell under a "created" or "updated" header: how many lines its text takes.
LINES_PER_TIME_CELL = """() => {
    const headers = [...document.querySelectorAll('#result_list thead th')];
    const columns = headers.flatMap((th, index) =>
        /created|updated/i.test(th.textContent) ? [index] : []);
    return [...document.querySelectorAll('#result_list tbody tr')].flatMap((row) =>
        columns.map((index) => {
            const range = document.createRange();
            range.selectNodeContents(row.children[index]);
            return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
        }));
}"""
HIDDEN_WIDTH = """() => {
    const results = document.querySelector('#changelist .results');
    return results.scrollWidth - results.clientWidth;
}"""


@pytest.fixture
def admin_page(chat_app: Any) -> Any:
    """A staff user's 1280 px tab, with an answer of a long prompt on record."""
    get_user_model().objects.filter(pk=chat_app.user.pk).update(is_staff=True, is_superuser=True)
    conversation = Conversation.objects.create(owner=chat_app.user)
    conversation_prompt(conversation=conversation, text=LONG_PROMPT)
    return chat_app.new_page(chat_app.new_context(**DESKTOP))


@pytest.mark.parametrize("change_list", CHANGE_LISTS)
def test_every_column_of_a_change_list_is_on_screen_at_1280_px(chat_app, admin_page, change_list):
    admin_page.goto(f"{chat_app.url}/admin/{change_list}/")
    admin_page.wait_for_selector("#result_list tbody tr")
    # Nothing (the status, the counts) is left behind the table's horizontal scroll.
    assert admin_page.evaluate(HIDDEN_WIDTH) <= 0


@pytest.mark.parametrize("change_list", CHANGE_LISTS)
def test_no_time_in_a_change_list_wraps_at_1280_px(chat_app, admin_page, change_list):
    admin_page.goto(f"{chat_app.url}/admin/{change_list}/")
    admin_page.wait_for_selector("#result_list tbody tr")
    lines = admin_page.evaluate(LINES_PER_TIME_CELL)
    assert lines and set(lines) == {1}, lines
