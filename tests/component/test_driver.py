"""The driver and the process writer: deltas in, tokens out at once, sentence batches
persisted beside them, one final status."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest
from channels.layers import get_channel_layer

from streaming import Delta, Finish, StreamError, drive
from streaming.core.lifecycle import text_digest
from streaming.driver import claim_here
from streaming.models import Chunk, Stream
from streaming.writer import get_writer
from tests.component.conftest import deltas

pytestmark = pytest.mark.django_db(transaction=True)


async def chunks_of(stream_id) -> list[tuple[int, str, str]]:
    return [
        row
        async for row in Chunk.objects.filter(stream_id=stream_id)
        .order_by("seq")
        .values_list("seq", "part", "text")
    ]


async def test_tokens_reach_on_token_as_deltas_and_equal_the_persisted_parts(amake_stream):
    stream = await amake_stream()
    seen: list[Delta] = []

    async def on_token(delta: Delta) -> None:
        seen.append(delta)

    source = [Delta("Let me think. ", "reasoning"), Delta("Ok.", "reasoning"), "Hello. ", "World!"]
    body = await drive(stream.id, deltas(source), on_token=on_token)
    assert [(d.part, d.text) for d in seen] == [
        ("reasoning", "Let me think. "),
        ("reasoning", "Ok."),
        ("text", "Hello. "),
        ("text", "World!"),
    ]
    assert (body.status, body.text, body.reasoning) == (
        "done",
        "Hello. World!",
        "Let me think. Ok.",
    )
    rows = await chunks_of(stream.id)
    assert [seq for seq, _, _ in rows] == list(range(len(rows)))
    assert "".join(t for _, p, t in rows if p == "reasoning") == "Let me think. Ok."
    assert "".join(t for _, p, t in rows if p == "text") == "Hello. World!"


async def test_a_change_of_part_ends_the_batch_so_no_chunk_mixes_parts(amake_stream):
    stream = await amake_stream()
    await drive(stream.id, deltas([Delta("no sentence end", "reasoning"), "answer"]))
    assert [(p, t) for _, p, t in await chunks_of(stream.id)] == [
        ("reasoning", "no sentence end"),
        ("text", "answer"),
    ]


async def test_the_final_row_records_parts_digests_finish_reason_model_and_usage(amake_stream):
    stream = await amake_stream()
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "reasoning_tokens": 2}
    source = [Delta("Hm.", "reasoning"), "Yes.", Finish("length", "m-1", usage)]
    body = await drive(stream.id, deltas(source))
    row = await Stream.objects.aget(id=stream.id)
    assert (row.text, row.reasoning) == ("Yes.", "Hm.")
    assert (row.length, row.sha256) == text_digest("Yes.")
    assert (row.reasoning_length, row.reasoning_sha256) == text_digest("Hm.")
    assert (row.finish_reason, row.model, row.usage) == ("length", "m-1", usage)
    assert (body.finish_reason, body.model, body.usage) == ("length", "m-1", usage)
    assert row.started_at <= row.first_token_at <= row.finished_at


async def test_a_source_that_reports_nothing_ends_with_stop_and_nulls(amake_stream):
    stream = await amake_stream()
    body = await drive(stream.id, deltas(["Hi."]))
    assert (body.finish_reason, body.model, body.usage) == ("stop", None, None)


async def test_a_second_drive_of_the_same_stream_is_refused(amake_stream):
    stream = await amake_stream()
    await drive(stream.id, deltas(["a"]))
    with pytest.raises(StreamError) as refused:
        await drive(stream.id, deltas(["b"]))
    assert refused.value.code == StreamError.ALREADY_CLAIMED


async def test_a_stream_created_claimed_is_driven_without_a_claim_of_its_own(amake_stream):
    stream = await amake_stream(claimed=True)
    assert stream.status == "streaming"
    body = await drive(stream.id, deltas(["Hi."]))
    assert body.status == "done"


async def statuses_announced(stream: Stream, run: Callable[[], Awaitable[object]]) -> list[str]:
    """The statuses the stream's group is told of while ``run`` drives it to its end."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(stream.group, channel)
    await run()
    statuses: list[str] = []
    while not statuses or statuses[-1] == "streaming":
        event = await asyncio.wait_for(layer.receive(channel), timeout=5)
        statuses += [f["status"] for f in event["frames"] if f["type"] == "status"]
    return statuses


async def test_a_stream_created_claimed_announces_only_its_final_status(amake_stream):
    # It was never pending for anyone: its first status is already streaming.
    stream = await amake_stream(claimed=True)
    statuses = await statuses_announced(stream, lambda: drive(stream.id, deltas(["Hi."])))
    assert statuses == ["done"]


async def test_claiming_a_pending_stream_announces_streaming_then_the_final_status(
    amake_stream,
):
    stream = await amake_stream()

    async def claim_and_drive() -> None:
        assert await claim_here(stream.id)
        await drive(stream.id, deltas(["Hi."]))

    assert await statuses_announced(stream, claim_and_drive) == ["streaming", "done"]


async def test_a_failing_source_ends_in_error_and_is_logged_with_its_traceback(
    amake_stream, caplog
):
    stream = await amake_stream()

    async def failing():
        yield "Part. "
        raise RuntimeError("model broke")

    with caplog.at_level(logging.WARNING, logger="streaming.driver"):
        body = await drive(stream.id, failing())
    assert (body.status, body.text) == ("error", "Part. ")
    record = next(r for r in caplog.records if "text source failed" in r.getMessage())
    assert record.levelno >= logging.WARNING and record.exc_info is not None


async def test_a_silent_source_ends_in_timeout_and_is_closed(amake_stream, settings):
    settings.STREAMING_DELTA_IDLE_TIMEOUT = 0.3
    stream = await amake_stream()
    closed = asyncio.Event()

    async def stalls():
        try:
            yield "Start. "
            await asyncio.sleep(3600)
        finally:
            closed.set()

    body = await asyncio.wait_for(drive(stream.id, stalls()), 10)
    assert (body.status, body.text, body.finish_reason) == ("timeout", "Start. ", "timeout")
    assert closed.is_set()


async def test_many_streams_share_the_writers_transactions(amake_stream, settings, monkeypatch):
    from streaming import writer

    settings.STREAMING_FLUSH_MIN_INTERVAL = 0.05
    rounds: list[int] = []
    real = writer.write_round

    def counted(work):
        rounds.append(len(work.appends) + len(work.ends))
        return real(work)

    monkeypatch.setattr(writer, "write_round", counted)
    streams = [await amake_stream(owner=None) for _ in range(20)]
    sentences = [f"Sentence {i}. " for i in range(10)]
    bodies = await asyncio.gather(*(drive(s.id, deltas(sentences, pause=0.01)) for s in streams))
    assert all(b.text == "".join(sentences) for b in bodies)
    # 20 streams of 10 sentences each and an end: far fewer rounds than writes.
    assert len(rounds) < 20 * 11 / 4
    assert max(rounds) > 1


async def endless(started: asyncio.Event, closed: asyncio.Event, pause: float = 0.01):
    """A source that never ends by itself: sentences until it is closed."""
    try:
        index = 0
        while True:
            yield f"Sentence {index}. "
            index += 1
            started.set()
            await asyncio.sleep(pause)
    finally:
        closed.set()


class Shown:
    """An on_token callback that keeps what the driver was shown."""

    def __init__(self) -> None:
        self.text = ""

    async def __call__(self, delta: Delta) -> None:
        self.text += delta.text


async def test_a_cancel_ends_the_stream_with_exactly_the_text_its_driver_was_shown(amake_stream):
    from streaming import cancel_stream

    stream = await amake_stream()
    started, closed, shown = asyncio.Event(), asyncio.Event(), Shown()
    task = asyncio.create_task(drive(stream.id, endless(started, closed), on_token=shown))
    await started.wait()
    assert await cancel_stream(stream.id) is True
    body = await asyncio.wait_for(task, 10)
    assert (body.status, body.finish_reason) == ("cancelled", "cancelled")
    assert body.text == shown.text
    assert closed.is_set()


async def test_a_cancel_from_another_process_is_acknowledged_by_the_driving_one(amake_stream):
    from channels.layers import get_channel_layer

    from streaming.hub import Hub, get_hub

    stream = await amake_stream()
    started, closed = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(drive(stream.id, endless(started, closed)))
    await started.wait()
    await get_hub()
    elsewhere = Hub(get_channel_layer())  # a second process's hub on the same layer
    await elsewhere.start()
    try:
        assert await elsewhere.request_cancel(str(stream.id), ack_within=5) is True
    finally:
        await elsewhere.stop()
    assert (await asyncio.wait_for(task, 10)).status == "cancelled"


async def test_a_cancel_that_no_driver_answers_ends_the_stream_within_two_seconds(amake_stream):
    from streaming import cancel_stream

    stream = await amake_stream(claimed=True)  # claimed, but its process "died"
    started = time.monotonic()
    assert await cancel_stream(stream.id) is True
    row = await Stream.objects.aget(id=stream.id)
    assert row.status == "cancelled"
    assert time.monotonic() - started < 2


async def test_deleting_a_running_stream_stops_its_driver_without_an_error(amake_stream, caplog):
    from streaming import delete_stream
    from streaming.asyncdb import run_in_db

    stream = await amake_stream()
    started, closed = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(drive(stream.id, endless(started, closed)))
    await started.wait()
    with caplog.at_level(logging.WARNING):
        assert await run_in_db(delete_stream, stream.id) is True
        body = await asyncio.wait_for(task, 10)
    assert body.status == "cancelled"
    assert closed.is_set()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_stream_settled_elsewhere_stops_its_driver_and_closes_the_source(amake_stream):
    from streaming import services
    from streaming.asyncdb import run_in_db

    stream = await amake_stream()
    started, closed = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(drive(stream.id, endless(started, closed)))
    await started.wait()
    await run_in_db(services.stream_settle_stopped, stream_id=stream.id, error="reaped")
    body = await asyncio.wait_for(task, 10)
    assert (body.status, body.error) == ("error", "reaped")
    assert closed.is_set()


async def test_stopping_the_server_saves_what_was_shown_and_ends_in_error(amake_stream):
    from streaming.driver import SERVER_STOPPED, drive_in_background, stop_background_drivers

    stream = await amake_stream()
    started, closed, shown = asyncio.Event(), asyncio.Event(), Shown()
    task = drive_in_background(stream.id, endless(started, closed), on_token=shown)
    await started.wait()
    await stop_background_drivers(grace=5)
    assert task.cancelled()
    row = await Stream.objects.aget(id=stream.id)
    assert (row.status, row.error, row.text) == ("error", SERVER_STOPPED, shown.text)


async def test_a_claimed_stream_never_driven_ends_in_error_when_the_server_stops(amake_stream):
    from streaming.driver import SERVER_STOPPED, stop_background_drivers

    stream = await amake_stream(claimed=True)
    await stop_background_drivers(grace=5)
    row = await Stream.objects.aget(id=stream.id)
    assert (row.status, row.error) == ("error", SERVER_STOPPED)


async def test_an_end_the_database_never_takes_raises_unavailable(
    amake_stream, settings, monkeypatch
):
    from django.db import OperationalError

    from streaming import writer

    settings.STREAMING_DB_RETRY_SECONDS = 0.2
    monkeypatch.setattr(writer, "FINAL_STATUS_RETRY_SECONDS", 0.5)
    monkeypatch.setattr("streaming.driver.FINAL_STATUS_RETRY_SECONDS", 0.5)

    def away(work):
        raise OperationalError("the database is away")

    monkeypatch.setattr(writer, "write_round", away)
    stream = await amake_stream()
    with pytest.raises(StreamError) as failed:
        await asyncio.wait_for(drive(stream.id, deltas(["Lost. "])), 10)
    assert failed.value.code == StreamError.UNAVAILABLE


async def test_a_quiet_stream_keeps_its_lease(amake_stream, settings):
    settings.STREAMING_LEASE_SECONDS = 0.6
    stream = await amake_stream()
    body = await drive(stream.id, deltas(["Slow. ", "Still here."], pause=1.0))
    assert body.status == "done"


async def test_a_drive_cancelled_while_its_end_waits_for_the_writer_still_ends_the_stream(
    amake_stream, settings
):
    settings.STREAMING_FLUSH_MIN_INTERVAL = 1.0
    stream = await amake_stream()
    first_write = asyncio.Event()

    async def source():
        yield Delta("Hm.", "reasoning")
        yield "Done."  # a change of part: the reasoning is written at once
        while not await Chunk.objects.filter(stream_id=stream.id).aexists():
            await asyncio.sleep(0.01)
        first_write.set()

    task = asyncio.create_task(drive(stream.id, source()))
    await first_write.wait()
    (generation,) = get_writer().generations
    while generation.ending is None:  # the end now waits for the writer's next round
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await Stream.objects.aget(id=stream.id)
    assert (row.status, row.text, row.reasoning) == ("done", "Done.", "Hm.")
