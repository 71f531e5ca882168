"""Selectors: reads only, and what a reader at a seq needs."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from streaming import services
from streaming.core.lifecycle import Status
from streaming.models import Chunk
from streaming.selectors import Snapshot, active_stream_bodies, body_of, catch_up
from streaming.services import ChunkWrite
from tests.fixtures import chunks_text

pytestmark = pytest.mark.django_db(transaction=True)


def append(stream, first_seq: int, *batches: tuple[str, str]) -> None:
    with transaction.atomic():
        services.chunks_append(writes=[ChunkWrite(str(stream.id), first_seq, list(batches))])


def finish(stream, first_seq: int) -> None:
    with transaction.atomic():
        services.stream_end(
            stream_id=stream.id,
            status=Status.DONE,
            written=chunks_text(stream.id),
            first_seq=first_seq,
        )


@pytest.fixture
def live(make_stream):
    """A streaming stream of five chunks: two of reasoning, three of text."""
    stream = make_stream(claimed=True)
    append(stream, 0, ("reasoning", "r0 "), ("reasoning", "r1 "), ("text", "A. "))
    append(stream, 3, ("text", "B. "), ("text", "C."))
    return stream


def test_a_reader_gets_the_chunks_after_its_seq_with_their_parts(live):
    reply = catch_up(stream_id=live.id, after=1)
    assert [(c.seq, c.part, c.text) for c in reply.chunks] == [
        (2, "text", "A. "),
        (3, "text", "B. "),
        (4, "text", "C."),
    ]
    assert (reply.snapshot, reply.last_seq) == (None, 4)


def test_a_reader_far_behind_gets_one_snapshot_of_both_parts(live):
    reply = catch_up(stream_id=live.id, after=0, snapshot_after=2)
    assert (reply.chunks, reply.snapshot, reply.last_seq) == (
        [],
        Snapshot("A. B. C.", "r0 r1 "),
        4,
    )


def test_a_snapshot_too_long_for_one_frame_is_sent_as_chunks(live):
    reply = catch_up(stream_id=live.id, after=0, snapshot_after=2, snapshot_max_chars=5)
    assert reply.snapshot is None
    assert [c.seq for c in reply.chunks] == [1, 2, 3, 4]


def test_a_final_stream_read_from_the_start_is_its_row(live):
    finish(live, 5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("streaming.selectors.chunks_after", None)  # never called
        reply = catch_up(stream_id=live.id, after=-1)
    assert reply.snapshot == Snapshot("A. B. C.", "r0 r1 ")


def test_a_final_stream_whose_chunks_were_purged_answers_with_a_snapshot(live):
    finish(live, 5)
    Chunk.objects.filter(stream=live).delete()
    reply = catch_up(stream_id=live.id, after=2)
    assert (reply.snapshot, reply.last_seq) == (Snapshot("A. B. C.", "r0 r1 "), 4)


def test_a_reader_up_to_date_with_a_final_stream_gets_nothing(live):
    finish(live, 5)
    reply = catch_up(stream_id=live.id, after=4)
    assert (reply.chunks, reply.snapshot, reply.stream.status) == ([], None, "done")


def test_the_body_after_a_seq_splits_text_and_reasoning(live):
    body = body_of(live.id, after=0)
    assert (body.reasoning, body.text, body.last_seq, body.snapshot) == (
        "r1 ",
        "A. B. C.",
        4,
        False,
    )


def test_a_page_read_never_gives_a_chunk_that_a_resume_after_its_last_seq_gives_again(live):
    """The page's text and last seq come from one read of the chunks: a chunk committed
    between the read of the streams and the read of the chunks is in both or neither."""

    def commit_a_chunk_after_the_streams_query(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if "streaming_stream" in sql and "streaming_chunk" not in sql and not done:
            done.append(True)
            append(live, 5, ("text", " D."))
        return result

    done: list[bool] = []
    with connection.execute_wrapper(commit_a_chunk_after_the_streams_query):
        body = active_stream_bodies([live.id])[live.id]
    resumed = "".join(c.text for c in catch_up(stream_id=live.id, after=body.last_seq).chunks)
    assert done
    assert body.text + resumed == "A. B. C. D."


def test_page_bodies_cover_active_streams_only(live, make_stream):
    final = make_stream(claimed=True)
    finish(final, 0)
    assert set(active_stream_bodies([live.id, final.id])) == {live.id}


def test_a_reader_that_counts_chunks_gets_a_final_streams_chunks_from_the_start(live):
    finish(live, 5)
    reply = catch_up(stream_id=live.id, after=-1, snapshots=False)
    assert (reply.snapshot, [c.seq for c in reply.chunks], reply.last_seq) == (
        None,
        [0, 1, 2, 3, 4],
        4,
    )


def test_a_reader_that_counts_chunks_far_behind_gets_chunks_not_a_snapshot(live):
    reply = catch_up(stream_id=live.id, after=0, snapshot_after=2, snapshots=False)
    assert (reply.snapshot, [c.seq for c in reply.chunks]) == (None, [1, 2, 3, 4])


def test_a_reader_that_counts_chunks_gets_a_snapshot_once_they_were_purged(live):
    finish(live, 5)
    Chunk.objects.filter(stream=live).delete()
    reply = catch_up(stream_id=live.id, after=-1, snapshots=False)
    assert (reply.chunks, reply.snapshot) == ([], Snapshot("A. B. C.", "r0 r1 "))
