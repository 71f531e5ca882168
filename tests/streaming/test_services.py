"""The lifecycle's services against the database: every change one conditional UPDATE."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from streaming import services
from streaming.core.lifecycle import Status, text_digest
from streaming.errors import StreamError
from streaming.models import Chunk, Stream

pytestmark = pytest.mark.django_db


def claim(stream):
    return services.stream_claim(stream_id=stream.id, driver_channel="specific.test!1")


def test_a_new_stream_is_pending_with_a_lease(make_stream):
    stream = make_stream()
    assert stream.status == Status.PENDING
    assert stream.lease_expires_at > timezone.now()
    assert stream.last_seq == -1


def test_second_claim_loses_when_first_claim_won(make_stream):
    stream = make_stream()
    assert claim(stream) is not None
    assert claim(stream) is None


def test_claiming_an_unknown_stream_wins_nothing(db):
    import uuid

    assert services.stream_claim(stream_id=uuid.uuid4(), driver_channel="x") is None


def test_chunks_get_consecutive_seqs_from_zero(make_stream):
    stream = make_stream()
    claim(stream)
    assert (
        services.chunk_append(
            stream_id=stream.id, group=stream.group, first_seq=0, texts=["A. ", "B. "]
        )
        == 1
    )
    assert (
        services.chunk_append(stream_id=stream.id, group=stream.group, first_seq=2, texts=["C."])
        == 2
    )
    assert list(Chunk.objects.filter(stream=stream).values_list("seq", "text")) == [
        (0, "A. "),
        (1, "B. "),
        (2, "C."),
    ]


def test_a_chunk_that_would_leave_a_gap_is_refused(make_stream):
    stream = make_stream()
    claim(stream)
    with pytest.raises(StreamError) as excinfo:
        services.chunk_append(stream_id=stream.id, group=stream.group, first_seq=1, texts=["late"])
    assert excinfo.value.code == StreamError.NOT_STREAMING
    assert not Chunk.objects.filter(stream=stream).exists()


def test_retrying_a_write_that_committed_does_not_write_twice(make_stream):
    stream = make_stream()
    claim(stream)
    services.chunk_append(stream_id=stream.id, group=stream.group, first_seq=0, texts=["A. ", "B."])
    assert (
        services.chunk_append(
            stream_id=stream.id, group=stream.group, first_seq=0, texts=["A. ", "B."]
        )
        == 1
    )
    assert Chunk.objects.filter(stream=stream).count() == 2


def test_chunks_are_refused_once_the_stream_is_final(make_stream):
    stream = make_stream()
    claim(stream)
    services.stream_finish(stream_id=stream.id, status=Status.CANCELLED)
    with pytest.raises(StreamError):
        services.chunk_append(stream_id=stream.id, group=stream.group, first_seq=0, texts=["x"])


def test_chunk_writes_renew_the_lease(make_stream):
    stream = make_stream()
    claim(stream)
    Stream.objects.filter(id=stream.id).update(lease_expires_at=timezone.now())
    services.chunk_append(stream_id=stream.id, group=stream.group, first_seq=0, texts=["x"])
    stream.refresh_from_db()
    assert stream.lease_expires_at > timezone.now() + timedelta(seconds=5)


def test_finishing_compacts_the_text_into_the_row(make_stream):
    stream = make_stream()
    claim(stream)
    services.chunk_append(
        stream_id=stream.id, group=stream.group, first_seq=0, texts=["Hé. ", "世界"]
    )
    finished = services.stream_finish(stream_id=stream.id, status=Status.DONE)
    assert finished.text == "Hé. 世界"
    assert (finished.length, finished.sha256) == text_digest("Hé. 世界")
    assert finished.finished_at is not None


def test_finishing_with_the_last_chunks_writes_and_compacts_them_at_once(make_stream):
    stream = make_stream()
    claim(stream)
    services.chunk_append(stream_id=stream.id, group=stream.group, first_seq=0, texts=["A. "])
    finished = services.stream_finish(
        stream_id=stream.id, status=Status.DONE, first_seq=1, texts=["B. ", "C."]
    )
    assert (finished.text, finished.last_seq) == ("A. B. C.", 2)
    assert list(Chunk.objects.filter(stream=stream).order_by("seq").values_list("seq", "text")) == [
        (0, "A. "),
        (1, "B. "),
        (2, "C."),
    ]


def test_a_finish_whose_chunks_would_leave_a_gap_changes_nothing(make_stream):
    stream = make_stream()
    claim(stream)
    assert (
        services.stream_finish(stream_id=stream.id, status=Status.DONE, first_seq=1, texts=["B."])
        is None
    )
    stream.refresh_from_db()
    assert (stream.status, stream.last_seq) == (Status.STREAMING, -1)
    assert not Chunk.objects.filter(stream=stream).exists()


@pytest.mark.parametrize("second", [Status.DONE, Status.ERROR, Status.TIMEOUT, Status.CANCELLED])
def test_a_final_status_never_changes(make_stream, second):
    stream = make_stream()
    claim(stream)
    services.stream_finish(stream_id=stream.id, status=Status.CANCELLED)
    assert services.stream_finish(stream_id=stream.id, status=second) is None
    stream.refresh_from_db()
    assert stream.status == Status.CANCELLED


def test_done_is_refused_for_a_stream_never_claimed(make_stream):
    stream = make_stream()
    assert services.stream_finish(stream_id=stream.id, status=Status.DONE) is None


def test_an_unexpired_stream_is_not_settled_as_timeout(make_stream):
    stream = make_stream()
    claim(stream)
    assert services.stream_settle_if_expired(stream_id=stream.id) is None


def test_an_expired_stream_is_settled_as_timeout_keeping_its_text(make_stream):
    stream = make_stream()
    claim(stream)
    services.chunk_append(stream_id=stream.id, group=stream.group, first_seq=0, texts=["Kept."])
    Stream.objects.filter(id=stream.id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    settled = services.stream_settle_if_expired(stream_id=stream.id)
    assert settled.status == Status.TIMEOUT
    assert settled.text == "Kept."
    assert settled.error


def test_an_owner_cannot_exceed_the_active_stream_limit(make_stream, settings):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 2
    make_stream()
    make_stream()
    with pytest.raises(StreamError) as excinfo:
        make_stream()
    assert excinfo.value.code == StreamError.TOO_MANY_ACTIVE
    assert Stream.objects.count() == 2


def test_final_streams_do_not_count_against_the_limit(make_stream, settings):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 1
    first = make_stream()
    services.stream_finish(stream_id=first.id, status=Status.CANCELLED)
    assert make_stream().status == Status.PENDING


def test_deleting_a_stream_removes_its_chunks(make_stream):
    stream = make_stream()
    claim(stream)
    services.chunk_append(stream_id=stream.id, group=stream.group, first_seq=0, texts=["x"])
    assert services.stream_delete(stream_id=stream.id)
    assert not Chunk.objects.exists()
    assert not Stream.objects.exists()


def test_the_adapter_hook_runs_inside_the_final_transaction(make_stream, settings):
    settings.STREAMING_ADAPTER = "tests.streaming.test_services.FailingAdapter"
    stream = make_stream()
    claim(stream)
    with pytest.raises(RuntimeError):
        services.stream_finish(stream_id=stream.id, status=Status.DONE)
    stream.refresh_from_db()
    assert stream.status == Status.STREAMING


class FailingAdapter:
    def stream_finished(self, stream):
        raise RuntimeError("hook failed")
