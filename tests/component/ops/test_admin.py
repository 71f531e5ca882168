"""The streams admin: streams for staff, read-only, with the operator actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.db import connection
from django.http import HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from streaming.admin import StreamAdmin
from streaming.core.lifecycle import Status
from streaming.models import Chunk, Stream
from tests.component.ops.conftest import chunk_count, status_of

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


def test_the_changelist_shows_streams_to_staff(admin_client, stream_in):
    stream = stream_in(Status.DONE, chunks=("Hello ", "there."))
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    assert str(stream.pk) in response.text


def test_the_changelist_counts_chunks_and_characters(admin_client, stream_in):
    stream_in(Status.STREAMING, chunks=("abc", "de"))
    row = admin_client.get(CHANGELIST).context["cl"].result_list[0]
    assert (row.chunks_kept, row.characters_so_far) == (2, 5)


def test_the_changelist_query_count_does_not_grow_with_rows(
    admin_client, stream_in, django_assert_max_num_queries
):
    stream_in(Status.DONE)
    stream_in(Status.STREAMING)
    with CaptureQueriesContext(connection) as few:
        admin_client.get(CHANGELIST)
    for status in [Status.DONE, Status.ERROR, Status.PENDING, Status.STREAMING] * 3:
        stream_in(status)
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert admin_client.get(CHANGELIST).context["cl"].result_count == 14


@pytest.mark.parametrize(
    ("query", "expected"),
    [("status=done", {"old", "new"}), ("age=hour", {"new", "live"}), ("age=older", {"old"})],
)
def test_the_changelist_filters_by_status_and_age(admin_client, stream_in, query, expected):
    rows = {
        "old": stream_in(Status.DONE, created_ago=timedelta(days=9)),
        "new": stream_in(Status.DONE),
        "live": stream_in(Status.STREAMING),
    }
    shown = {row.pk for row in admin_client.get(f"{CHANGELIST}?{query}").context["cl"].result_list}
    assert shown == {rows[name].pk for name in expected}


def test_the_changelist_searches_by_id_and_owner(admin_client, stream_in):
    stream = stream_in(Status.DONE)
    for term in [str(stream.pk), "own", "not-a-uuid"]:
        result = admin_client.get(CHANGELIST, {"q": term}).context["cl"].result_list
        assert [row.pk for row in result] == ([] if term == "not-a-uuid" else [stream.pk])


def test_the_change_page_shows_the_text_and_the_chunks_in_order(admin_client, stream_in):
    stream = stream_in(Status.DONE, chunks=("First. ", "Second. ", "Third."))
    Chunk.objects.filter(stream=stream, seq=0).delete()
    Chunk.objects.create(stream=stream, seq=0, text="First. ")  # the newest row is seq 0
    response = admin_client.get(change_url(stream))
    assert response.status_code == 200
    assert "First. Second. Third." in response.text
    (chunks,) = response.context["inline_admin_formsets"]
    assert [form.original.seq for form in chunks] == [0, 1, 2]


@pytest.mark.parametrize("status", [Status.PENDING, Status.STREAMING, Status.DONE])
def test_the_change_page_opens_for_a_stream_in_any_status(admin_client, stream_in, status):
    assert admin_client.get(change_url(stream_in(status))).status_code == 200


def test_the_text_of_an_active_stream_leaves_its_reasoning_out(stream_in):
    stream = stream_in(Status.STREAMING, reasoning=("Thinking hard. ",), chunks=("The answer.",))
    text = StreamAdmin(Stream, admin.site).full_text(stream)
    assert "The answer." in text and "Thinking hard." not in text


def test_no_one_can_add_a_stream_or_change_a_final_status(admin_client, stream_in):
    stream = stream_in(Status.DONE)
    assert admin_client.get(reverse("admin:streaming_stream_add")).status_code == 403
    assert admin_client.post(change_url(stream), {"status": "streaming"}).status_code == 403
    assert status_of(stream) == Status.DONE


@pytest.mark.parametrize("who", ["anonymous", "non-staff"])
def test_the_admin_sends_others_to_the_login_page(client, stream_in, owner, who):
    if who == "non-staff":
        client.force_login(owner)
    stream = stream_in(Status.DONE)
    for url in [CHANGELIST, change_url(stream)]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.django_db(transaction=True)
def test_the_cancel_action_cancels_a_pending_stream(admin_client, stream_in):
    pending, done = stream_in(Status.PENDING), stream_in(Status.DONE)
    response = act(admin_client, "cancel_selected", pending, done)
    assert response.status_code == 200
    assert (status_of(pending), status_of(done)) == (Status.CANCELLED, Status.DONE)
    assert "Skipped 1 stream(s) already final." in response.text


@pytest.mark.django_db(transaction=True)
def test_the_cancel_action_cancels_a_streaming_stream_whose_driver_is_gone(
    admin_client, stream_in, settings
):
    settings.STREAMING_CANCEL_ACK_SECONDS = 0.2
    orphan = stream_in(Status.STREAMING)
    act(admin_client, "cancel_selected", orphan)
    assert status_of(orphan) == Status.CANCELLED


def test_the_mark_timeout_action_settles_only_expired_streams(admin_client, stream_in):
    stale = stream_in(Status.STREAMING, lease_in=EXPIRED)
    alive = stream_in(Status.STREAMING)
    act(admin_client, "settle_stale_selected", stale, alive)
    assert (status_of(stale), status_of(alive)) == (Status.TIMEOUT, Status.STREAMING)


def test_the_purge_action_removes_final_streams_only(admin_client, stream_in):
    done, active = stream_in(Status.DONE), stream_in(Status.STREAMING)
    response = act(admin_client, "purge_selected", done, active)
    assert "Removed 1 stream and 2 chunks." in response.text
    assert "Skipped 1 active stream(s)" in response.text
    assert list(Stream.objects.values_list("pk", flat=True)) == [active.pk]
    assert chunk_count(active) == 2
