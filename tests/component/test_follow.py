"""The follower: catch up, then live, exactly once, for every transport."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction

from streaming import services
from streaming.core.lifecycle import Status
from streaming.follow import Follower
from streaming.frames import active_status_frame, chunk_frame, status_frame
from streaming.services import ChunkWrite
from tests.fixtures import chunks_text

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def append(stream, first_seq: int, *texts: str) -> None:
    batches = [("text", text) for text in texts]
    with transaction.atomic():
        services.chunks_append(writes=[ChunkWrite(str(stream.id), first_seq, batches)])


@sync_to_async
def finish(stream, first_seq: int):
    with transaction.atomic():
        return services.stream_end(
            stream_id=stream.id,
            status=Status.DONE,
            written=chunks_text(stream.id),
            first_seq=first_seq,
        )


def texts(frames) -> list[tuple[str, object]]:
    return [(f["type"], f.get("seq", f.get("status"))) for f in frames]


@pytest.fixture
async def stream(amake_stream):
    return await amake_stream(claimed=True)


async def test_live_chunks_up_to_the_catch_ups_cursor_are_dropped(stream):
    await append(stream, 0, "A. ", "B. ")
    follower = Follower()
    sid = str(stream.id)
    assert texts(await follower.catch_up(sid, -1)) == [("chunk", 0), ("chunk", 1)]
    live = [chunk_frame(sid, 1, "text", "B. "), chunk_frame(sid, 2, "text", "C.")]
    await append(stream, 2, "C.")
    assert texts(await follower.live(live)) == [("chunk", 2)]


async def test_a_live_chunk_that_skips_ahead_is_preceded_by_the_missing_ones(stream):
    follower = Follower()
    sid = str(stream.id)
    follower.follow(sid)
    await append(stream, 0, "A. ", "B. ", "C.")
    out = await follower.live([chunk_frame(sid, 2, "text", "C.")])
    assert [(f["seq"], f["text"]) for f in out] == [(0, "A. "), (1, "B. "), (2, "C.")]
    assert await follower.live([chunk_frame(sid, 2, "text", "C.")]) == []


async def test_a_final_status_ahead_of_the_cursor_brings_the_missing_chunks_first(stream):
    follower = Follower()
    sid = str(stream.id)
    follower.follow(sid, after=0)
    await append(stream, 0, "A. ", "B. ")
    final = await finish(stream, 2)
    out = await follower.live([status_frame(final)])
    assert texts(out) == [("chunk", 1), ("status", "done")]
    assert not follower.follows(sid)


async def test_a_status_of_a_stream_not_followed_is_passed_on_once(stream):
    follower = Follower()
    sid = str(stream.id)
    final = await finish(stream, 0)
    assert texts(await follower.live([active_status_frame(sid, "streaming")])) == [
        ("status", "streaming")
    ]
    assert texts(await follower.live([status_frame(final)])) == [("status", "done")]
    assert await follower.live([status_frame(final)]) == []


async def test_chunks_of_a_stream_not_followed_are_not_this_connections(stream):
    follower = Follower()
    await append(stream, 0, "A. ")
    assert await follower.live([chunk_frame(str(stream.id), 0, "text", "A. ")]) == []


async def test_a_catch_up_of_a_final_stream_ends_with_its_status_and_stops_following(stream):
    await append(stream, 0, "A. ")
    await finish(stream, 1)
    follower = Follower()
    out = await follower.catch_up(str(stream.id), 0)
    assert texts(out) == [("status", "done")]
    assert not follower.follows(str(stream.id))


async def test_a_repair_with_the_database_away_passes_the_gap_on(stream, monkeypatch):
    from django.db import OperationalError

    follower = Follower()
    sid = str(stream.id)
    follower.follow(sid)

    def away(**kwargs):
        raise OperationalError("away")

    monkeypatch.setattr("streaming.follow.catch_up", away)
    frame = chunk_frame(sid, 3, "text", "D.")
    assert await follower.live([frame]) == [frame]  # the client's gap rule resumes


async def test_a_follower_that_counts_chunks_catches_up_a_final_stream_with_its_chunks(stream):
    await append(stream, 0, "A. ", "B. ")
    await finish(stream, 2)
    follower = Follower(snapshots=False)
    out = await follower.catch_up(str(stream.id), -1, snapshot_after=0)
    assert texts(out) == [("chunk", 0), ("chunk", 1), ("status", "done")]


async def test_a_follower_that_counts_chunks_repairs_with_chunks(stream):
    follower = Follower(snapshots=False)
    sid = str(stream.id)
    follower.follow(sid)
    await append(stream, 0, "A. ", "B. ")
    final = await finish(stream, 2)
    out = await follower.live([status_frame(final)])
    assert texts(out) == [("chunk", 0), ("chunk", 1), ("status", "done")]
