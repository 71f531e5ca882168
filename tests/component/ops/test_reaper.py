"""The reaper: streams whose lease expired become timeout through the usual final path;
nothing else changes."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from streaming import housekeeping, tasks
from streaming.core.lifecycle import Status
from streaming.models import Stream
from streaming.services import TIMEOUT_MESSAGE
from tests.component import app
from tests.component.ops.conftest import chunk_count, status_of

pytestmark = pytest.mark.django_db

EXPIRED = timedelta(seconds=-30)


def test_the_reaper_settles_only_the_stream_whose_lease_expired(stream_in):
    expired = stream_in(Status.STREAMING, lease_in=EXPIRED)
    alive = stream_in(Status.STREAMING)
    done = stream_in(Status.DONE, lease_in=EXPIRED)
    assert housekeeping.streams_reap() == 1
    assert [status_of(s) for s in (expired, alive, done)] == ["timeout", "streaming", "done"]


def test_an_expired_pending_stream_is_settled_too(stream_in):
    pending = stream_in(Status.PENDING, chunks=(), lease_in=EXPIRED)
    housekeeping.streams_reap()
    assert status_of(pending) == Status.TIMEOUT


def test_a_reaped_stream_keeps_its_chunks_and_its_text(stream_in):
    stream = stream_in(Status.STREAMING, chunks=("One. ", "Two. ", "Three"), lease_in=EXPIRED)
    housekeeping.streams_reap()
    stream.refresh_from_db()
    assert (stream.text, stream.length, stream.error) == ("One. Two. Three", 15, TIMEOUT_MESSAGE)
    assert chunk_count(stream) == 3


def test_a_reaped_stream_keeps_its_reasoning_apart_from_its_text(stream_in):
    stream = stream_in(
        Status.STREAMING, reasoning=("Hm. ",), chunks=("Half an answer",), lease_in=EXPIRED
    )
    housekeeping.streams_reap()
    stream.refresh_from_db()
    assert (stream.reasoning, stream.reasoning_length, stream.text) == ("Hm. ", 4, "Half an answer")


def test_a_reaped_stream_records_timeout_as_its_finish_reason_and_no_usage(stream_in):
    stream = stream_in(Status.STREAMING, lease_in=EXPIRED)
    housekeeping.streams_reap()
    stream.refresh_from_db()
    assert (stream.finish_reason, stream.model, stream.usage) == ("timeout", "", None)


def test_the_projects_hook_hears_of_a_reaped_stream_with_its_text(stream_in):
    stream = stream_in(Status.STREAMING, chunks=("Half ", "an answer"), lease_in=EXPIRED)
    app.finished.clear()
    housekeeping.streams_reap()
    assert app.finished == [(str(stream.id), "timeout", "Half an answer")]


def test_the_group_hears_the_timeout_after_the_commit(
    stream_in, django_capture_on_commit_callbacks
):
    group = f"ops.reaper.{uuid.uuid4().hex}"
    stream = stream_in(Status.STREAMING, lease_in=EXPIRED, group=group)
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


def test_a_stream_whose_lease_was_renewed_meanwhile_is_left_alone(stream_in, monkeypatch):
    stream = stream_in(Status.STREAMING, lease_in=EXPIRED)
    settle = housekeeping.services.stream_settle_if_expired

    def renewed_first(*, stream_id: uuid.UUID) -> Stream | None:
        Stream.objects.filter(pk=stream_id).update(
            lease_expires_at=stream.created_at + timedelta(days=1)
        )
        return settle(stream_id=stream_id)

    monkeypatch.setattr(housekeeping.services, "stream_settle_if_expired", renewed_first)
    assert housekeeping.streams_reap() == 0
    assert status_of(stream) == Status.STREAMING


def test_the_scheduled_task_runs_the_reaper(stream_in):
    stream_in(Status.STREAMING, lease_in=EXPIRED)
    assert tasks.reap_streams() == 1
