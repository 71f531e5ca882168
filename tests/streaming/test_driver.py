"""The driver: tokens at once, sentences persisted beside them, one final status."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import DataError
from django.utils import timezone

import streaming
from streaming.core.lifecycle import Status, text_digest
from streaming.driver import WRITE_FAILED
from streaming.models import Chunk, Stream
from tests.streaming.conftest import deltas

pytestmark = pytest.mark.django_db(transaction=True)

SENTENCES = ["Hello ", "there. ", "How ", "are ", "you? ", "Fine", "!"]


async def chunk_texts(stream_id) -> list[str]:
    return [
        c
        async for c in Chunk.objects.filter(stream_id=stream_id)
        .order_by("seq")
        .values_list("text", flat=True)
    ]


async def test_drive_persists_sentences_and_ends_done(amake_stream):
    stream = await amake_stream()
    text = await streaming.drive(stream.id, deltas(SENTENCES))
    assert text == "".join(SENTENCES)
    assert await chunk_texts(stream.id) == ["Hello there. ", "How are you? ", "Fine!"]
    stream = await Stream.objects.aget(id=stream.id)
    assert (stream.status, stream.text, stream.last_seq) == (Status.DONE, text, 2)
    assert (stream.length, stream.sha256) == text_digest(text)


async def test_on_token_sees_every_delta_in_order(amake_stream):
    stream = await amake_stream()
    seen: list[str] = []

    async def on_token(delta: str) -> None:
        seen.append(delta)

    await streaming.drive(stream.id, deltas(SENTENCES), on_token=on_token)
    assert seen == SENTENCES


async def test_a_failing_on_token_does_not_stop_the_generation(amake_stream):
    stream = await amake_stream()

    async def gone(delta: str) -> None:
        raise ConnectionError("socket closed")

    assert await streaming.drive(stream.id, deltas(SENTENCES), on_token=gone) == "".join(SENTENCES)


async def test_a_second_driver_is_refused(amake_stream):
    stream = await amake_stream()
    await streaming.drive(stream.id, deltas(["a"]))
    with pytest.raises(streaming.StreamError) as excinfo:
        await streaming.drive(stream.id, deltas(["b"]))
    assert excinfo.value.code == streaming.StreamError.ALREADY_CLAIMED


async def test_a_failing_source_ends_in_error_keeping_the_partial_text(amake_stream):
    stream = await amake_stream()

    async def failing():
        yield "Partial. "
        yield "text"
        raise RuntimeError("upstream broke")

    assert await streaming.drive(stream.id, failing()) == "Partial. text"
    stream = await Stream.objects.aget(id=stream.id)
    assert stream.status == Status.ERROR
    assert stream.error
    assert "Traceback" not in stream.error


async def test_an_empty_source_ends_done_with_empty_text(amake_stream):
    stream = await amake_stream()
    assert await streaming.drive(stream.id, deltas([])) == ""
    stream = await Stream.objects.aget(id=stream.id)
    assert (stream.status, stream.last_seq, stream.length) == (Status.DONE, -1, 0)


async def test_cancel_flushes_the_buffer_and_closes_the_source(amake_stream):
    stream = await amake_stream()
    closed = asyncio.Event()
    emitted: list[str] = []

    async def endless():
        try:
            yield "No sentence end here "
            while True:
                await asyncio.sleep(0.01)
                yield "word "
        finally:
            closed.set()

    async def on_token(delta: str) -> None:
        emitted.append(delta)

    task = asyncio.create_task(streaming.drive(stream.id, endless(), on_token=on_token))
    while len(emitted) < 5:
        await asyncio.sleep(0.01)
    assert await streaming.cancel_stream(stream.id)
    text = await asyncio.wait_for(task, 5)
    assert closed.is_set()
    assert text == "".join(emitted)
    assert "".join(await chunk_texts(stream.id)) == text
    assert (await Stream.objects.aget(id=stream.id)).status == Status.CANCELLED


async def test_cancelling_a_pending_stream_settles_it_at_once(amake_stream):
    stream = await amake_stream()
    assert await streaming.cancel_stream(stream.id)
    assert (await Stream.objects.aget(id=stream.id)).status == Status.CANCELLED


async def test_cancelling_a_final_stream_changes_nothing(amake_stream):
    stream = await amake_stream()
    await streaming.drive(stream.id, deltas(["Done."]))
    assert not await streaming.cancel_stream(stream.id)
    assert (await Stream.objects.aget(id=stream.id)).status == Status.DONE


async def test_text_without_boundaries_is_flushed_by_the_delay(amake_stream, settings):
    settings.STREAMING_FLUSH_MAX_DELAY = 0.05
    stream = await amake_stream()
    release = asyncio.Event()

    async def code_then_wait():
        yield "x = compute(a.b)"
        await release.wait()

    task = asyncio.create_task(streaming.drive(stream.id, code_then_wait()))
    for _ in range(200):
        if await Chunk.objects.filter(stream_id=stream.id).aexists():
            break
        await asyncio.sleep(0.01)
    assert await chunk_texts(stream.id) == ["x = compute(a.b)"]
    release.set()
    await task


async def test_a_model_faster_than_the_write_interval_shares_writes_not_rows(
    amake_stream, settings
):
    settings.STREAMING_FLUSH_MIN_INTERVAL = 60.0
    layer = get_channel_layer()
    channel = await layer.new_channel()
    stream = await amake_stream(group="test.interval")
    await layer.group_add("test.interval", channel)
    sentences = [f"Sentence {n}. " for n in range(10)]
    await streaming.drive(stream.id, deltas(sentences, pause=0.01))
    events = []
    while not events or events[-1][-1].get("status") != "done":
        events.append((await asyncio.wait_for(layer.receive(channel), 5))["frames"])
    # The first sentence is written at once; the nine that came within the interval
    # wait for the end of the text and share its write with the final status, one
    # channel-layer message, each sentence still its own row.
    assert [[f.get("seq", f.get("status")) for f in frames] for frames in events] == [
        ["streaming"],
        [0],
        [1, 2, 3, 4, 5, 6, 7, 8, 9, "done"],
    ]
    assert await chunk_texts(stream.id) == sentences


async def test_last_chunks_the_database_refuses_end_the_stream_in_error_without_them(
    amake_stream, monkeypatch
):
    stream = await amake_stream()
    finish = streaming.services.stream_finish

    def refuse_chunks(**kwargs):
        if kwargs["texts"]:
            raise DataError("value too long")
        return finish(**kwargs)

    monkeypatch.setattr(streaming.services, "stream_finish", refuse_chunks)
    assert await streaming.drive(stream.id, deltas(["Kept. ", "Refused"], pause=0.05)) == "Kept. "
    row = await Stream.objects.aget(id=stream.id)
    assert (row.status, row.error, row.text) == (Status.ERROR, WRITE_FAILED, "Kept. ")


async def test_a_quiet_driver_renews_its_lease(amake_stream, settings):
    settings.STREAMING_LEASE_SECONDS = 0.3
    stream = await amake_stream()

    async def slow():
        await asyncio.sleep(0.6)
        yield "late"

    task = asyncio.create_task(streaming.drive(stream.id, slow()))
    await asyncio.sleep(0.45)
    row = await Stream.objects.aget(id=stream.id)
    assert row.status == Status.STREAMING
    assert row.lease_expires_at > timezone.now() - timedelta(seconds=0.05)
    assert await task == "late"


async def test_a_driver_whose_stream_was_reaped_stops(amake_stream):
    from streaming import services

    stream = await amake_stream()
    release = asyncio.Event()

    async def source():
        yield "First. "
        await release.wait()
        yield "Second. "

    task = asyncio.create_task(streaming.drive(stream.id, source()))
    while not await Stream.objects.filter(id=stream.id, status=Status.STREAMING).aexists():
        await asyncio.sleep(0.01)
    await Stream.objects.filter(id=stream.id).aupdate(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    await sync_to_async(services.stream_settle_if_expired)(stream_id=stream.id)
    release.set()
    await asyncio.wait_for(task, 5)
    row = await Stream.objects.aget(id=stream.id)
    assert row.status == Status.TIMEOUT
    assert "".join(await chunk_texts(row.id)) == row.text


async def test_chunk_and_status_frames_reach_the_group_after_commit(amake_stream):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    stream = await amake_stream(group="test.frames")
    await layer.group_add("test.frames", channel)
    await streaming.drive(stream.id, deltas(SENTENCES))
    frames = []
    while not frames or frames[-1].get("status") != "done":
        event = await asyncio.wait_for(layer.receive(channel), 5)
        frames += event["frames"]
    kinds = [(f["type"], f.get("seq", f.get("status"))) for f in frames]
    assert kinds == [
        ("status", "streaming"),
        ("chunk", 0),
        ("chunk", 1),
        ("chunk", 2),
        ("status", "done"),
    ]
    assert frames[-1]["sha256"] == text_digest("".join(SENTENCES))[1]


async def test_get_stream_body_reads_after_a_seq(amake_stream):
    stream = await amake_stream()
    await streaming.drive(stream.id, deltas(SENTENCES))
    body = await streaming.aget_stream_body(stream.id, after=0)
    assert (body.text, body.last_seq, body.status, body.snapshot) == (
        "How are you? Fine!",
        2,
        "done",
        False,
    )


async def test_stopping_the_server_saves_the_buffer_and_ends_in_error(amake_stream):
    from streaming.driver import SERVER_STOPPED, stop_background_drivers

    stream = await amake_stream()
    emitted: list[str] = []

    async def endless():
        while True:
            await asyncio.sleep(0.005)
            yield "word "

    async def on_token(delta: str) -> None:
        emitted.append(delta)

    streaming.drive_in_background(stream.id, endless(), on_token=on_token)
    while len(emitted) < 5:
        await asyncio.sleep(0.01)
    await stop_background_drivers()
    row = await Stream.objects.aget(id=stream.id)
    assert (row.status, row.error) == (Status.ERROR, SERVER_STOPPED)
    assert row.text == "".join(emitted)


async def test_a_failing_database_call_is_retried_until_it_succeeds(settings):
    from django.db import OperationalError

    from streaming.driver import _with_db_retry

    calls = []

    def flaky(*, value: int) -> int:
        calls.append(value)
        if len(calls) < 3:
            raise OperationalError("server closed the connection unexpectedly")
        return value

    assert await _with_db_retry(flaky, value=7) == 7
    assert len(calls) == 3


async def test_a_database_away_for_too_long_raises(settings):
    from django.db import OperationalError

    from streaming.driver import _with_db_retry

    settings.STREAMING_DB_RETRY_SECONDS = 0.2

    def down() -> None:
        raise OperationalError("could not connect to server")

    with pytest.raises(OperationalError):
        await _with_db_retry(down)
