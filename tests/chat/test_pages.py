"""Server-rendered pages, and what a final answer leaves in its message for them."""

from __future__ import annotations

import pytest

import streaming
from chatproject.chat.markdown import MARKDOWN_VERSION, render_markdown
from chatproject.chat.models import Conversation, Message
from streaming.core.lifecycle import Status

pytestmark = pytest.mark.django_db


def test_login_is_required_for_the_conversation_list(client):
    assert client.get("/").status_code == 302


def test_the_list_shows_the_users_conversations_newest_first(client, user, conversation):
    newer = Conversation.objects.create(owner=user, title="Newer")
    client.force_login(user)
    page = client.get("/").content.decode()
    assert page.index("Newer") < page.index("Plans")
    assert newer.pk


def test_posting_creates_a_conversation_and_redirects_to_it(client, user):
    client.force_login(user)
    response = client.post("/conversations/")
    conversation = Conversation.objects.get(owner=user)
    assert response.status_code == 302
    assert response["Location"] == f"/conversations/{conversation.pk}/"


def test_a_foreign_conversation_page_is_404(client, django_user_model, conversation):
    client.force_login(django_user_model.objects.create_user("bob", password="pw"))
    assert client.get(f"/conversations/{conversation.pk}/").status_code == 404


def test_a_streaming_message_renders_its_persisted_text_and_last_seq(
    client, user, conversation, answer
):
    message = answer(conversation, "Hi", ["Persisted so far. "], final=None)
    client.force_login(user)
    page = client.get(f"/conversations/{conversation.pk}/").content.decode()
    assert "Persisted so far." in page
    assert f'data-stream-id="{message.stream_id}"' in page
    assert 'data-last-seq="0"' in page


def test_a_timed_out_answer_says_in_plain_words_what_happened(client, user, conversation, answer):
    message = answer(conversation, "Hi", ["Cut "], final=None)
    Message.objects.filter(pk=message.pk).update(
        status="timeout", error="The stream's driver stopped responding (its lease expired)."
    )
    client.force_login(user)
    page = client.get(f"/conversations/{conversation.pk}/").content.decode()
    status = page[page.index('class="message-status"') :].split("</div>")[0]
    assert "Interrupted" in status
    assert "The server writing this answer stopped responding" in status
    assert "lease" not in status and "driver" not in status


def test_the_final_text_is_copied_into_the_message(conversation, answer):
    message = answer(conversation, "Hi", ["A. ", "B."], final=Status.DONE)
    assert (message.text, message.status, message.last_seq) == ("A. B.", "done", 1)


def test_a_final_answer_is_rendered_once_into_the_message(conversation, answer):
    message = answer(conversation, "Hi", ["**Bold** ", "<script>x</script>"], final=Status.DONE)
    assert (message.html, message.html_version) == (
        render_markdown("**Bold** <script>x</script>"),
        MARKDOWN_VERSION,
    )
    assert "<strong>Bold</strong>" in message.html and "<script>" not in message.html


def test_the_page_shows_the_stored_html_of_a_final_answer(client, user, conversation, answer):
    message = answer(conversation, "Hi", ["Rendered once."], final=Status.DONE)
    Message.objects.filter(pk=message.pk).update(html="<p>from the row</p>")
    client.force_login(user)
    page = client.get(f"/conversations/{conversation.pk}/").content.decode()
    assert "<p>from the row</p>" in page and "Rendered once." not in page


def test_html_of_an_older_renderer_is_rendered_again_from_the_text(
    client, user, conversation, answer
):
    message = answer(conversation, "Hi", ["*Fresh*"], final=Status.DONE)
    Message.objects.filter(pk=message.pk).update(html="<p>stale</p>", html_version=0)
    client.force_login(user)
    page = client.get(f"/conversations/{conversation.pk}/").content.decode()
    assert "<em>Fresh</em>" in page and "stale" not in page


def test_the_message_keeps_its_text_when_the_stream_is_deleted(conversation, answer):
    message = answer(conversation, "Hi", ["Kept."], final=Status.DONE)
    streaming.delete_stream(message.stream_id)
    message.refresh_from_db()
    assert (message.text, message.stream_id) == ("Kept.", None)
