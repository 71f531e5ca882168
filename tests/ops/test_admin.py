"""The admin: streams and chat rows for staff, read-only, with the operator actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.http import HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from chatproject.chat.models import Message
from streaming.core.lifecycle import Status
from streaming.models import Chunk, Stream
from tests.ops.conftest import chunk_count, status_of

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:streaming_stream_changelist")
EXPIRED = timedelta(seconds=-30)


def change_url(stream: Stream) -> str:
    return reverse("admin:streaming_stream_change", args=[stream.pk])


def act(client: Client, action: str, *streams: Stream) -> HttpResponse:
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [str(s.pk) for s in streams]},
        follow=True,
    )


def test_the_changelist_shows_streams_to_staff(admin_client, make_stream):
    stream = make_stream(Status.DONE, chunks=("Hello ", "there."))
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    assert str(stream.pk) in response.text


def test_the_changelist_counts_chunks_and_characters(admin_client, make_stream):
    make_stream(Status.STREAMING, chunks=("abc", "de"))
    row = admin_client.get(CHANGELIST).context["cl"].result_list[0]
    assert (row.chunks_kept, row.characters_so_far) == (2, 5)


def test_the_changelist_query_count_does_not_grow_with_rows(
    admin_client, make_stream, django_assert_max_num_queries
):
    make_stream(Status.DONE)
    make_stream(Status.STREAMING)
    with CaptureQueriesContext(connection) as few:
        admin_client.get(CHANGELIST)
    for status in [Status.DONE, Status.ERROR, Status.PENDING, Status.STREAMING] * 3:
        make_stream(status)
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert admin_client.get(CHANGELIST).context["cl"].result_count == 14


@pytest.mark.parametrize(
    ("query", "expected"),
    [("status=done", {"old", "new"}), ("age=hour", {"new", "live"}), ("age=older", {"old"})],
)
def test_the_changelist_filters_by_status_and_age(admin_client, make_stream, query, expected):
    rows = {
        "old": make_stream(Status.DONE, created_ago=timedelta(days=9)),
        "new": make_stream(Status.DONE),
        "live": make_stream(Status.STREAMING),
    }
    shown = {row.pk for row in admin_client.get(f"{CHANGELIST}?{query}").context["cl"].result_list}
    assert shown == {rows[name].pk for name in expected}


def test_the_changelist_searches_by_id_and_owner(admin_client, make_stream):
    stream = make_stream(Status.DONE)
    for term in [str(stream.pk), "ops-own", "not-a-uuid"]:
        result = admin_client.get(CHANGELIST, {"q": term}).context["cl"].result_list
        assert [row.pk for row in result] == ([] if term == "not-a-uuid" else [stream.pk])


def test_the_change_page_shows_the_text_and_the_chunks_in_order(admin_client, make_stream):
    stream = make_stream(Status.DONE, chunks=("First. ", "Second. ", "Third."))
    Chunk.objects.filter(stream=stream, seq=0).delete()
    Chunk.objects.create(stream=stream, seq=0, text="First. ")  # the newest row is seq 0
    response = admin_client.get(change_url(stream))
    assert response.status_code == 200
    assert "First. Second. Third." in response.text
    (chunks,) = response.context["inline_admin_formsets"]
    assert [form.original.seq for form in chunks] == [0, 1, 2]


def test_no_one_can_add_a_stream_or_change_a_final_status(admin_client, make_stream):
    stream = make_stream(Status.DONE)
    assert admin_client.get(reverse("admin:streaming_stream_add")).status_code == 403
    assert admin_client.post(change_url(stream), {"status": "streaming"}).status_code == 403
    assert status_of(stream) == Status.DONE


@pytest.mark.parametrize("who", ["anonymous", "non-staff"])
def test_the_admin_sends_others_to_the_login_page(client, make_stream, owner, who):
    if who == "non-staff":
        client.force_login(owner)
    stream = make_stream(Status.DONE)
    for url in [CHANGELIST, change_url(stream)]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.django_db(transaction=True)
def test_the_cancel_action_cancels_a_pending_stream(admin_client, make_stream):
    pending, done = make_stream(Status.PENDING, chunks=()), make_stream(Status.DONE)
    response = act(admin_client, "cancel_selected", pending, done)
    assert response.status_code == 200
    assert (status_of(pending), status_of(done)) == (Status.CANCELLED, Status.DONE)
    assert "Skipped 1 stream(s) already final." in response.text


def test_the_mark_timeout_action_settles_only_expired_streams(admin_client, make_stream):
    stale = make_stream(Status.STREAMING, lease_in=EXPIRED)
    alive = make_stream(Status.STREAMING)
    act(admin_client, "settle_stale_selected", stale, alive)
    assert (status_of(stale), status_of(alive)) == (Status.TIMEOUT, Status.STREAMING)


def test_the_purge_action_removes_final_streams_only(admin_client, make_stream):
    done, active = make_stream(Status.DONE), make_stream(Status.STREAMING)
    response = act(admin_client, "purge_selected", done, active)
    assert "Removed 1 stream and 2 chunks." in response.text
    assert "Skipped 1 active stream(s)" in response.text
    assert list(Stream.objects.values_list("pk", flat=True)) == [active.pk]
    assert chunk_count(active) == 2


def test_the_chat_admin_lists_conversations_with_message_counts(
    admin_client, make_stream, make_message
):
    message = make_message(make_stream(Status.DONE))
    Message.objects.create(conversation=message.conversation, role="user", text="hi")
    response = admin_client.get(reverse("admin:chat_conversation_changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_list[0].messages_count == 2


def test_the_chat_admin_shows_a_conversation_with_its_messages(
    admin_client, make_stream, make_message
):
    message = make_message(make_stream(Status.DONE))
    url = reverse("admin:chat_conversation_change", args=[message.conversation_id])
    response = admin_client.get(url)
    assert response.status_code == 200
    assert "Hello. World." in response.text


def test_the_chat_admin_lists_messages_with_role_and_status(
    admin_client, make_stream, make_message
):
    make_message(make_stream(Status.DONE))
    response = admin_client.get(reverse("admin:chat_message_changelist"), {"role": "assistant"})
    assert response.status_code == 200
    assert [(m.role, m.status) for m in response.context["cl"].result_list] == [
        ("assistant", "done")
    ]
