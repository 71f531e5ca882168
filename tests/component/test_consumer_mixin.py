"""The websocket consumer mixin, through the trivial consumer of tests/component/app.py:
``resume`` and ``cancel`` frames, group events to a socket exactly once and in order,
repairs from the database, and what frames look like on the wire."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from streaming import services
from streaming.frames import aannounce, chunk_frame, chunk_frames, group_event
from streaming.models import Stream

pytestmark = pytest.mark.django_db(transaction=True)

THREE = [("text", "A. "), ("text", "B. "), ("text", "C.")]


@sync_to_async
def persist(stream_id: str, first_seq: int, batches) -> None:
    """Commit chunks as the process writer does (no announcement)."""
    with transaction.atomic():
        write = services.ChunkWrite(stream_id, first_seq, batches)
        assert services.chunks_append(writes=[write]) == {stream_id: True}


async def socket_following_a_live_stream(amake_user, amake_stream, connect, group: str):
    """A socket that has resumed a claimed, empty stream whose frames go to ``group``."""
    user = await amake_user()
    stream = await amake_stream(group=group, owner=user, claimed=True)
    _, socket = await connect("lobby", user=user)
    await socket.send({"type": "resume", "stream_id": str(stream.id), "after": -1})
    await socket.settled()  # frames are handled in order: the resume is done
    return str(stream.id), socket


async def test_a_chunk_lost_by_the_layer_is_repaired_from_the_database(
    amake_user, amake_stream, connect
):
    stream_id, socket = await socket_following_a_live_stream(
        amake_user, amake_stream, connect, "elsewhere"
    )
    await persist(stream_id, 0, THREE)
    # Only the last chunk's broadcast arrives: seq 0 and 1 were "dropped".
    await get_channel_layer().group_send(
        "elsewhere", group_event([chunk_frame(stream_id, 2, "text", "C.")])
    )
    frames = [await socket.next() for _ in range(3)]
    assert [(f["seq"], f["text"]) for f in frames] == [(0, "A. "), (1, "B. "), (2, "C.")]


async def test_the_chunks_of_one_write_reach_the_socket_as_frames_in_seq_order(
    amake_user, amake_stream, connect
):
    stream_id, socket = await socket_following_a_live_stream(
        amake_user, amake_stream, connect, "one.write"
    )
    await persist(stream_id, 0, THREE)
    await aannounce("one.write", chunk_frames(stream_id, 0, THREE))  # one group event
    frames = [await socket.next() for _ in range(3)]
    assert [(f["type"], f["seq"], f["text"]) for f in frames] == [
        ("chunk", 0, "A. "),
        ("chunk", 1, "B. "),
        ("chunk", 2, "C."),
    ]


async def test_group_events_skip_channels_database_thread_hop(amake_user, connect, monkeypatch):
    hops: list[str] = []

    async def counted_hop() -> None:
        hops.append("hop")

    monkeypatch.setattr("channels.consumer.aclose_old_connections", counted_hop)
    _, socket = await connect("hops", user=await amake_user())
    hops.clear()
    frame = {"type": "status", "stream_id": "s", "status": "done", "last_seq": -1}
    await get_channel_layer().group_send("room.hops", group_event([frame]))
    assert (await socket.next())["type"] == "status"
    assert hops == []
    await socket.settled()
    assert hops == ["hop"]  # client frames keep Channels' connection hygiene


async def test_a_resume_of_an_expired_stream_settles_it_as_timeout_for_everyone(
    amake_user, amake_stream, connect
):
    user = await amake_user()
    stream = await amake_stream(group="room.expired", owner=user)
    await Stream.objects.filter(id=stream.id).aupdate(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    _, watcher = await connect("expired", user=user)
    _, resumer = await connect("expired", user=user)
    await resumer.send({"type": "resume", "stream_id": str(stream.id), "after": -1})
    assert (await resumer.until_final(str(stream.id)))["status"] == "timeout"
    assert (await watcher.until_final(str(stream.id)))["status"] == "timeout"


async def test_a_text_too_long_for_one_snapshot_resumes_as_chunks(amake_user, connect, settings):
    settings.STREAMING_SNAPSHOT_MAX_CHARS = 10
    _, socket = await connect("long", user=await amake_user())
    stream_id = await socket.start(["First sentence. ", "Second sentence. ", "Third one."])
    await socket.until_final(stream_id)
    before = len(socket.frames)
    await socket.send({"type": "resume", "stream_id": stream_id, "after": -1})
    frame = await socket.next()
    assert (frame["type"], frame["seq"]) == ("chunk", 0)
    final = await socket.until_final(stream_id)
    resumed = [f for f in socket.frames[before:] if f["type"] == "chunk"]
    assert final["last_seq"] >= 1
    assert [f["seq"] for f in resumed] == list(range(final["last_seq"] + 1))
    assert "".join(f["text"] for f in resumed) == "First sentence. Second sentence. Third one."


async def test_frames_carry_unicode_unescaped(amake_user, connect):
    _, socket = await connect("unicode", user=await amake_user())
    await socket.send({"type": "start", "words": ["世界"]})
    raw = await socket.communicator.receive_from()
    while json.loads(raw)["type"] != "token":
        raw = await socket.communicator.receive_from()
    assert "世界" in raw


UNKNOWN = "00000000-0000-0000-0000-000000000000"
BAD_FRAMES = [
    ('{"type": "resume", "stream_id": "nope", "after": -1}', "unknown_stream"),
    (f'{{"type": "resume", "stream_id": "{UNKNOWN}", "after": -1}}', "unknown_stream"),
    (f'{{"type": "resume", "stream_id": "{UNKNOWN}", "after": "x"}}', "invalid_frame"),
    (f'{{"type": "resume", "stream_id": "{UNKNOWN}", "after": -2}}', "invalid_frame"),
    (f'{{"type": "resume", "stream_id": "{UNKNOWN}", "after": true}}', "invalid_frame"),
    ('{"type": "resume", "stream_id": 5, "after": -1}', "invalid_frame"),
    ('{"type": "resume", "after": -1}', "invalid_frame"),
    ('{"type": "cancel"}', "invalid_frame"),
    ('{"type": "cancel", "stream_id": ["x"]}', "invalid_frame"),
    ('{"type": "cancel", "stream_id": "nope"}', "unknown_stream"),
    (f'{{"type": "cancel", "stream_id": "{UNKNOWN}"}}', "unknown_stream"),
]


@pytest.mark.parametrize(("raw", "code"), BAD_FRAMES)
async def test_a_bad_resume_or_cancel_frame_gets_an_error_frame_and_the_socket_stays_open(
    amake_user, connect, raw, code
):
    _, socket = await connect("bad", user=await amake_user())
    await socket.send_raw(raw)
    frame = await socket.next()
    assert (frame["type"], frame["code"]) == ("error", code)
    assert frame["detail"]
    assert await Stream.objects.acount() == 0
    stream_id = await socket.start(["still open"])
    assert (await socket.until_final(stream_id))["status"] == "done"
