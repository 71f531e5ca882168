"""The purge: chunks of old final streams, then old final stream rows, in bounded
batches; active streams, messages and conversations are never touched."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from streaming import get_stream_body, housekeeping, tasks
from streaming.core.lifecycle import Status
from streaming.housekeeping import PurgeResult, streams_purge
from streaming.models import Chunk, Stream
from tests.component.ops.conftest import chunk_count, status_of

pytestmark = pytest.mark.django_db

HOURS = timedelta(hours=1)
MONTHS = timedelta(days=60)


def deletes(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if q["sql"].upper().startswith("DELETE")]


def test_chunks_of_final_streams_past_chunk_retention_are_deleted(stream_in):
    old = stream_in(Status.DONE, finished_ago=2 * HOURS)
    assert streams_purge() == PurgeResult(streams=0, chunks=2)
    assert chunk_count(old) == 0
    assert Stream.objects.filter(pk=old.pk).exists()


def test_recent_final_streams_keep_their_chunks(stream_in):
    recent = stream_in(Status.DONE, finished_ago=timedelta(minutes=10))
    streams_purge()
    assert chunk_count(recent) == 2


def test_final_streams_past_stream_retention_are_deleted(stream_in):
    old = stream_in(Status.ERROR, finished_ago=MONTHS)
    assert streams_purge() == PurgeResult(streams=1, chunks=2)
    assert not Stream.objects.filter(pk=old.pk).exists()


@pytest.mark.parametrize(
    ("status", "chunks"), [(Status.PENDING, ()), (Status.STREAMING, ("Hello. ", "World."))]
)
def test_active_streams_are_never_touched(stream_in, status, chunks):
    active = stream_in(status, chunks=chunks, created_ago=MONTHS, lease_in=-MONTHS)
    assert streams_purge(older_than=timedelta(0)) == PurgeResult(0, 0)
    assert (status_of(active), chunk_count(active)) == (status, len(chunks))


def test_a_stream_whose_chunks_are_purged_resumes_with_a_snapshot(stream_in):
    stream = stream_in(Status.DONE, chunks=("A. ", "B. ", "C."), finished_ago=2 * HOURS)
    streams_purge()
    body = get_stream_body(stream.id, after=0)
    assert (body.text, body.snapshot, body.last_seq) == ("A. B. C.", True, 2)


def test_no_delete_statement_removes_more_than_a_batch(stream_in, settings):
    settings.STREAMING_PURGE_BATCH_SIZE = 2
    stream_in(Status.DONE, chunks=[f"{n}. " for n in range(7)], finished_ago=2 * HOURS)
    with CaptureQueriesContext(connection) as queries:
        result = streams_purge()
    assert result.chunks == 7
    assert len(deletes(queries)) == 4  # ceil(7 / 2)


def test_stream_rows_are_deleted_in_batches_too(stream_in, settings):
    settings.STREAMING_PURGE_BATCH_SIZE = 2
    for _ in range(5):
        stream_in(Status.DONE, chunks=(), finished_ago=MONTHS)
    with CaptureQueriesContext(connection) as queries:
        assert streams_purge().streams == 5
    stream_deletes = [s for s in deletes(queries) if s.startswith('DELETE FROM "streaming_stream"')]
    assert len(stream_deletes) == 3


def test_deleting_stream_rows_never_loads_chunks_or_texts(stream_in):
    stream_in(Status.DONE, chunks=["x"] * 20, finished_ago=MONTHS)
    with CaptureQueriesContext(connection) as queries:
        streams_purge()
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert not [sql for sql in selects if '"streaming_chunk"."text"' in sql]
    assert not [sql for sql in selects if '"streaming_stream"."text"' in sql]


def test_a_dry_run_deletes_nothing_and_reports_what_it_would(stream_in):
    stream_in(Status.DONE, finished_ago=2 * HOURS)
    stream_in(Status.CANCELLED, chunks=("a", "b", "c"), finished_ago=MONTHS)
    assert streams_purge(dry_run=True) == PurgeResult(streams=1, chunks=5, dry_run=True)
    assert (Stream.objects.count(), Chunk.objects.count()) == (2, 5)


def test_older_than_replaces_both_retentions(stream_in):
    stream_in(Status.DONE, finished_ago=timedelta(minutes=10))
    stream_in(Status.DONE, finished_ago=timedelta(minutes=1))
    assert streams_purge(older_than=timedelta(minutes=5)) == PurgeResult(streams=1, chunks=2)


def test_the_purge_selected_deletes_final_streams_only(stream_in):
    stream_in(Status.DONE)
    active = stream_in(Status.STREAMING)
    result = housekeeping.streams_purge_final(streams=Stream.objects.all())
    assert result == PurgeResult(streams=1, chunks=2)
    assert list(Stream.objects.values_list("pk", flat=True)) == [active.pk]


def test_the_scheduled_task_runs_the_purge(stream_in):
    stream_in(Status.DONE, finished_ago=MONTHS)
    assert tasks.purge_streams() == {"streams": 1, "chunks": 2}


@pytest.mark.django_db(transaction=True)
def test_two_purges_at_once_neither_fail_nor_count_twice(stream_in, settings):
    settings.STREAMING_PURGE_BATCH_SIZE = 3
    for _ in range(8):
        stream_in(Status.DONE, chunks=[f"{n}. " for n in range(10)], finished_ago=MONTHS)
    barrier = threading.Barrier(2)
    results: list[PurgeResult] = []
    errors: list[BaseException] = []

    def purge() -> None:
        try:
            barrier.wait()
            results.append(streams_purge())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=purge) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sum(results, PurgeResult(0, 0)) == PurgeResult(streams=8, chunks=80)
    assert (Stream.objects.count(), Chunk.objects.count()) == (0, 0)


def test_the_scheduled_purge_logs_what_it_removed(stream_in, caplog):
    stream_in(Status.DONE, finished_ago=MONTHS)
    with caplog.at_level("INFO", logger="streaming"):
        tasks.purge_streams()
    assert [r.getMessage() for r in caplog.records] == ["purge: Removed 1 stream and 2 chunks."]
