"""The chat admin: conversations and messages for staff, read-only."""

from __future__ import annotations

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_the_chat_admin_lists_conversations_with_message_counts(admin_client, answer_in):
    answer_in()  # a question and its answer
    response = admin_client.get(reverse("admin:chat_conversation_changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_list[0].messages_count == 2


def test_the_chat_admin_shows_a_conversation_with_its_messages(admin_client, answer_in):
    answer = answer_in()
    url = reverse("admin:chat_conversation_change", args=[answer.conversation_id])
    response = admin_client.get(url)
    assert response.status_code == 200
    assert "Hello. World." in response.text


def test_the_chat_admin_lists_messages_with_role_and_status(admin_client, answer_in):
    answer_in()
    response = admin_client.get(reverse("admin:chat_message_changelist"), {"role": "assistant"})
    assert response.status_code == 200
    assert [(m.role, m.status) for m in response.context["cl"].result_list] == [
        ("assistant", "done")
    ]
