"""The consumer mixin on the trivial consumer: driving, resume, cancel, limits."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.core.cache import caches
from django.db import transaction

from streaming import flood, services
from streaming.consumers import FLOOD_CLOSE_CODE
from streaming.core.lifecycle import Status
from streaming.frames import aannounce, chunk_frames, status_frame
from streaming.models import Stream
from streaming.services import ChunkWrite
from tests.fixtures import parts_of

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_driving_socket_gets_its_tokens_and_every_socket_the_same_chunks(
    amake_user, connect
):
    user = await amake_user()
    _, driver = await connect("r1", user)
    _, viewer = await connect("r1", user)
    stream_id = await driver.start(["One. ", "Two. "], reasoning=["Hm. "])
    await driver.until_final(stream_id)
    await viewer.until_final(stream_id)
    for part, text in (("text", "One. Two. "), ("reasoning", "Hm. ")):
        assert driver.joined("token", stream_id, part) == text
        assert viewer.joined("chunk", stream_id, part) == text
    assert viewer.joined("token", stream_id) == ""


async def test_of_two_sockets_claiming_a_pending_stream_one_drives_and_one_follows(
    amake_user, amake_stream, connect, caplog
):
    """A stream created unclaimed (a form's POST) is driven by whichever socket claims
    it first; the other learns it lost at once, without an error in the log."""
    user = await amake_user()
    stream = await amake_stream(group="room.claims", owner=user)
    stream_id = str(stream.id)
    sockets = [(await connect("claims", user))[1] for _ in range(2)]
    for socket in sockets:
        await socket.send({"type": "drive", "stream_id": stream_id, "words": ["A. ", "B. "]})
    roles = [
        (await s.until(lambda f: f["type"] in ("driving", "following")))["type"] for s in sockets
    ]
    assert sorted(roles) == ["driving", "following"]
    driver, follower = sockets if roles[0] == "driving" else sockets[::-1]
    await follower.send({"type": "resume", "stream_id": stream_id, "after": -1})
    await driver.until_final(stream_id)
    await follower.until_final(stream_id)
    assert driver.joined("token", stream_id) == "A. B. "
    assert follower.joined("chunk", stream_id) == "A. B. "
    assert follower.joined("token", stream_id) == ""
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # Once it ran, nobody claims it again.
    await follower.send({"type": "drive", "stream_id": stream_id})
    assert (await follower.until(lambda f: f["type"] == "following"))["stream_id"] == stream_id


async def test_a_resume_sends_the_final_status_of_a_stream_that_ends_while_it_joins(
    amake_user, amake_stream, connect, monkeypatch
):
    """Join first, then read: a stream that ends between the two is read as final."""
    user = await amake_user()
    stream = await amake_stream(group="room.late", owner=user, claimed=True)
    _, socket = await connect("elsewhere", user)
    layer = get_channel_layer()  # the consumers' own instance
    real_group_add = layer.group_add

    async def ends_first(group: str, channel: str) -> None:
        if group == "room.late":
            await sync_to_async(services.stream_cancel_now)(stream_id=stream.id)
        await real_group_add(group, channel)

    monkeypatch.setattr(layer, "group_add", ends_first)
    await socket.send({"type": "resume", "stream_id": str(stream.id), "after": -1})
    assert (await socket.until_final(str(stream.id)))["status"] == "cancelled"


async def test_a_cancel_frame_stops_a_stream_driven_by_another_socket(amake_user, connect):
    user = await amake_user()
    _, driver = await connect("r2", user)
    _, other = await connect("r2", user)
    stream_id = await driver.start(["word "] * 500, pause=0.01)
    await driver.until(lambda f: f["type"] == "token")
    await other.send({"type": "cancel", "stream_id": stream_id})
    final = await other.until_final(stream_id)
    assert final["status"] == "cancelled"
    await driver.until_final(stream_id)  # every token it was sent, read
    row = await Stream.objects.aget(id=stream_id)
    assert row.text == driver.joined("token", stream_id)


async def test_another_users_stream_is_unknown_to_resume_and_cancel(
    amake_user, amake_stream, connect
):
    ann, bob = await amake_user("ann"), await amake_user("bob")
    stream = await amake_stream(owner=ann)
    _, socket = await connect("r3", bob)
    for kind in ("resume", "cancel"):
        await socket.send({"type": kind, "stream_id": str(stream.id), "after": -1})
        error = await socket.until(lambda f: f["type"] == "error")
        assert error["code"] == "unknown_stream"
    assert (await Stream.objects.aget(id=stream.id)).status == "pending"


async def test_the_flood_limit_holds_per_user_across_sockets(amake_user, connect, settings):
    settings.STREAMING_FRAME_BURST = 10
    settings.STREAMING_FRAME_RATE = 1
    user = await amake_user()
    _, first = await connect("r4", user)
    for _ in range(6):
        await first.send({"type": "ping"})
    await first.close()
    _, second = await connect("r4", user)  # reconnecting does not reset the count
    for _ in range(5):
        await second.send({"type": "ping"})
    closed = await second.communicator.receive_output(timeout=5)
    while closed["type"] != "websocket.close":
        closed = await second.communicator.receive_output(timeout=5)
    assert closed["code"] == FLOOD_CLOSE_CODE


async def test_sockets_count_their_frames_in_one_cache_instance(amake_user, connect, monkeypatch):
    # ``caches[alias]`` is one instance per asyncio task: a counter taken from it opened a
    # cache (a Redis connection pool) for every socket.
    monkeypatch.setattr(flood, "_RATE_CACHES", {})
    opened: list[str] = []
    create = caches.create_connection

    def counted(alias: str) -> Any:
        opened.append(alias)
        return create(alias)

    monkeypatch.setattr(caches, "create_connection", counted)
    user = await amake_user()
    for _ in range(3):
        _, socket = await connect("r4", user)
        await socket.send({"type": "ping"})
        assert (await socket.next())["type"] == "error"
        await socket.close()
    assert opened == ["default"]


async def test_an_oversized_frame_is_refused_and_logged_once_with_the_user(
    amake_user, connect, caplog
):
    user = await amake_user()
    _, socket = await connect("r5", user)
    with caplog.at_level(logging.INFO, logger="streaming.consumers"):
        raw = '{"type": "start", "words": ["' + "x" * 300_000 + '"]}'
        await socket.send_raw(raw)
        error = await socket.until(lambda f: f["type"] == "error")
    assert error["code"] == "frame_too_large"
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == [
        f"frame refused: {len(raw)} bytes, over the 262144-byte limit "
        f"(user {user.pk}, path /ws/rooms/r5/)"
    ]


async def test_with_cancel_on_disconnect_a_driver_leaving_cancels_its_stream(
    amake_user, connect, settings
):
    settings.STREAMING_CANCEL_ON_DRIVER_DISCONNECT = True
    user = await amake_user()
    _, driver = await connect("r6", user)
    _, viewer = await connect("r6", user)
    stream_id = await driver.start(["word "] * 500, pause=0.01)
    await driver.until(lambda f: f["type"] == "token")
    await driver.close()
    assert (await viewer.until_final(stream_id))["status"] == "cancelled"


async def test_a_resume_far_behind_gets_one_snapshot_then_the_live_chunks(
    amake_user, amake_stream, connect, settings
):
    settings.STREAMING_RESUME_SNAPSHOT_AFTER = 2
    user = await amake_user()
    stream = await amake_stream(group="room.r7", owner=user, claimed=True)
    writes = [
        ChunkWrite(str(stream.id), 0, [("reasoning", "R. "), ("text", "A. "), ("text", "B. ")])
    ]
    await sync_to_async(lambda: transaction.atomic()(services.chunks_append)(writes=writes))()
    _, socket = await connect("r7", user)
    await socket.send({"type": "resume", "stream_id": str(stream.id), "after": -1})
    snapshot = await socket.until(lambda f: f["type"] == "snapshot")
    assert (snapshot["text"], snapshot["reasoning"], snapshot["last_seq"]) == ("A. B. ", "R. ", 2)
    final = await sync_to_async(
        lambda: transaction.atomic()(services.stream_end)(
            stream_id=stream.id,
            status=Status.DONE,
            written=parts_of(writes[0].batches),
            first_seq=3,
            tail=[("text", "C.")],
        )
    )()

    await aannounce(
        "room.r7", [*chunk_frames(str(stream.id), 3, [("text", "C.")]), status_frame(final)]
    )
    chunk = await socket.until(lambda f: f["type"] == "chunk")
    assert (chunk["seq"], chunk["text"]) == (3, "C.")
    assert (await socket.until_final(str(stream.id)))["sha256"] == final.sha256
