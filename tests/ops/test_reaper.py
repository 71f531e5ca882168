"""The reaper: streams whose lease expired become timeout through the usual final path;
nothing else changes."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from chatproject.chat.models import Message
from streaming import housekeeping, tasks
from streaming.core.lifecycle import Status
from streaming.models import Stream
from streaming.services import TIMEOUT_MESSAGE
from tests.ops.conftest import chunk_count, status_of

pytestmark = pytest.mark.django_db

EXPIRED = timedelta(seconds=-30)


def test_the_reaper_settles_only_the_stream_whose_lease_expired(make_stream):
    expired = make_stream(Status.STREAMING, lease_in=EXPIRED)
    alive = make_stream(Status.STREAMING)
    done = make_stream(Status.DONE, lease_in=EXPIRED)
    assert housekeeping.streams_reap() == 1
    assert [status_of(s) for s in (expired, alive, done)] == ["timeout", "streaming", "done"]


def test_an_expired_pending_stream_is_settled_too(make_stream):
    pending = make_stream(Status.PENDING, chunks=(), lease_in=EXPIRED)
    housekeeping.streams_reap()
    assert status_of(pending) == Status.TIMEOUT


def test_a_reaped_stream_keeps_its_chunks_and_its_text(make_stream):
    stream = make_stream(Status.STREAMING, chunks=("One. ", "Two. ", "Three"), lease_in=EXPIRED)
    housekeeping.streams_reap()
    stream.refresh_from_db()
    assert (stream.text, stream.length, stream.error) == ("One. Two. Three", 15, TIMEOUT_MESSAGE)
    assert chunk_count(stream) == 3


def test_the_message_of_a_reaped_stream_gets_its_text_and_status(make_stream, make_message):
    stream = make_stream(Status.STREAMING, chunks=("Half ", "an answer"), lease_in=EXPIRED)
    message = make_message(stream)
    housekeeping.streams_reap()
    message = Message.objects.get(pk=message.pk)
    assert (message.text, message.status, message.last_seq) == ("Half an answer", "timeout", 1)


def test_the_group_hears_the_timeout_after_the_commit(
    make_stream, django_capture_on_commit_callbacks
):
    group = f"ops.reaper.{uuid.uuid4().hex}"
    stream = make_stream(Status.STREAMING, lease_in=EXPIRED, group=group)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        housekeeping.streams_reap()
    assert len(callbacks) == 1  # nothing is announced before the commit
    callbacks[0]()
    event = async_to_sync(layer.receive)(channel)
    [frame] = event["frames"]
    assert (frame["type"], frame["stream_id"], frame["status"]) == (
        "status",
        str(stream.id),
        "timeout",
    )
    async_to_sync(layer.group_discard)(group, channel)


def test_a_stream_whose_lease_was_renewed_meanwhile_is_left_alone(make_stream, monkeypatch):
    stream = make_stream(Status.STREAMING, lease_in=EXPIRED)
    settle = housekeeping.services.stream_settle_if_expired

    def renewed_first(*, stream_id: uuid.UUID) -> Stream | None:
        Stream.objects.filter(pk=stream_id).update(
            lease_expires_at=stream.created_at + timedelta(days=1)
        )
        return settle(stream_id=stream_id)

    monkeypatch.setattr(housekeeping.services, "stream_settle_if_expired", renewed_first)
    assert housekeeping.streams_reap() == 0
    assert status_of(stream) == Status.STREAMING


def test_the_scheduled_task_runs_the_reaper(make_stream):
    make_stream(Status.STREAMING, lease_in=EXPIRED)
    assert tasks.reap_streams() == 1
