"""Server-rendered pages and the messages API."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import streaming
from chatproject.chat.markdown import MARKDOWN_VERSION, render_markdown
from chatproject.chat.models import Conversation, Message
from chatproject.chat.services import conversation_prompt
from streaming import services
from streaming.core.lifecycle import Status

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("ann", password="pw")


@pytest.fixture
def conversation(user):
    return Conversation.objects.create(owner=user, title="Plans")


def answer(conversation, text: str, chunks: list[str], final: Status | None) -> Message:
    """A prompt whose answer has persisted ``chunks`` and, if given, a final status."""
    _, assistant = conversation_prompt(conversation=conversation, text=text)
    services.stream_claim(stream_id=assistant.stream_id, driver_channel="x")
    if chunks:
        services.chunk_append(stream_id=assistant.stream_id, group="g", first_seq=0, texts=chunks)
    if final:
        services.stream_finish(stream_id=assistant.stream_id, status=final)
    assistant.refresh_from_db()
    return assistant


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


def test_a_streaming_message_renders_its_persisted_text_and_last_seq(client, user, conversation):
    message = answer(conversation, "Hi", ["Persisted so far. "], final=None)
    client.force_login(user)
    page = client.get(f"/conversations/{conversation.pk}/").content.decode()
    assert "Persisted so far." in page
    assert f'data-stream-id="{message.stream_id}"' in page
    assert 'data-last-seq="0"' in page


def test_the_final_text_is_copied_into_the_message(conversation):
    message = answer(conversation, "Hi", ["A. ", "B."], final=Status.DONE)
    assert (message.text, message.status, message.last_seq) == ("A. B.", "done", 1)


def test_a_final_answer_is_rendered_once_into_the_message(conversation):
    message = answer(conversation, "Hi", ["**Bold** ", "<script>x</script>"], final=Status.DONE)
    assert (message.html, message.html_version) == (
        render_markdown("**Bold** <script>x</script>"),
        MARKDOWN_VERSION,
    )
    assert "<strong>Bold</strong>" in message.html and "<script>" not in message.html


def test_the_page_shows_the_stored_html_of_a_final_answer(client, user, conversation):
    message = answer(conversation, "Hi", ["Rendered once."], final=Status.DONE)
    Message.objects.filter(pk=message.pk).update(html="<p>from the row</p>")
    client.force_login(user)
    page = client.get(f"/conversations/{conversation.pk}/").content.decode()
    assert "<p>from the row</p>" in page and "Rendered once." not in page


def test_html_of_an_older_renderer_is_rendered_again_from_the_text(client, user, conversation):
    message = answer(conversation, "Hi", ["*Fresh*"], final=Status.DONE)
    Message.objects.filter(pk=message.pk).update(html="<p>stale</p>", html_version=0)
    client.force_login(user)
    page = client.get(f"/conversations/{conversation.pk}/").content.decode()
    assert "<em>Fresh</em>" in page and "stale" not in page


def test_the_message_keeps_its_text_when_the_stream_is_deleted(conversation):
    message = answer(conversation, "Hi", ["Kept."], final=Status.DONE)
    streaming.delete_stream(message.stream_id)
    message.refresh_from_db()
    assert (message.text, message.stream_id) == ("Kept.", None)


def test_the_messages_api_lists_messages_in_order_with_persisted_text(client, user, conversation):
    done = answer(conversation, "First", ["Done."], final=Status.DONE)
    live = answer(conversation, "Second", ["Live. "], final=None)
    client.force_login(user)
    messages = client.get(f"/api/conversations/{conversation.pk}/messages/").json()["messages"]
    assert [(m["role"], m["text"], m["status"], m["last_seq"]) for m in messages] == [
        ("user", "First", "done", None),
        ("assistant", "Done.", "done", 0),
        ("user", "Second", "done", None),
        ("assistant", "Live. ", "streaming", 0),
    ]
    assert messages[1]["stream_id"] == str(done.stream_id)
    assert messages[3]["stream_id"] == str(live.stream_id)
    assert messages[0]["stream_id"] is None


def test_the_messages_api_runs_a_constant_number_of_queries(client, user, conversation, settings):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 0
    client.force_login(user)
    api = f"/api/conversations/{conversation.pk}/messages/"

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(api).status_code == 200
        return len(queries)

    answer(conversation, "one", ["x. "], final=None)
    few = count()
    for n in range(5):
        answer(conversation, f"more {n}", ["y. "], final=Status.DONE if n % 2 else None)
    assert count() == few


def test_the_messages_api_refuses_anonymous_and_hides_foreign_ids(
    client, django_user_model, conversation
):
    api = f"/api/conversations/{conversation.pk}/messages/"
    assert client.get(api).status_code == 403
    client.force_login(django_user_model.objects.create_user("bob", password="pw"))
    assert client.get(api).status_code == 404
