"""The driver: one generation, from text deltas to a final status.

Per stream, one task consumes the deltas: it awaits the next one, hands it to
``on_token`` at once and feeds the sentence batcher; it never waits for the database.
The process writer (``streaming.writer``) persists the batches of every stream beside
it, and the process hub (``streaming.hub``) brings cancels from any process.

A stop (cancel, idle source, server shutdown) interrupts only the wait for the next
delta: a token is either shown and persisted, or neither, so the driver's tokens always
equal the persisted text.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from django.utils import timezone

from streaming import services
from streaming.adapter import get_adapter
from streaming.asyncdb import run_in_db
from streaming.conf import app_settings
from streaming.core.batching import Batch, PartBatcher
from streaming.core.body import StreamBody
from streaming.core.deltas import PARTS, Delta, Finish, as_delta
from streaming.core.lifecycle import Status
from streaming.core.text import clean_text
from streaming.errors import StreamError
from streaming.frames import aannounce, active_status_frame
from streaming.hub import get_hub
from streaming.metrics import ACTIVE_STREAMS, TIME_TO_FIRST_TOKEN, TOKENS
from streaming.models import Stream
from streaming.selectors import body_of, final_body, stream_get
from streaming.writer import FINAL_STATUS_RETRY_SECONDS, End, get_writer

logger = logging.getLogger(__name__)

TokenCallback = Callable[[Delta], Awaitable[None]]
SourceItem = str | Delta | Finish

SERVER_STOPPED = "The server restarted while answering."
WRITE_FAILED = "The text could not be saved; it ends here."
IDLE_MESSAGE = "The answer stopped: its source sent nothing for {seconds:g} s."
SHUTDOWN_GRACE_SECONDS = 4.0
_TOKENS = {part: TOKENS.labels(part) for part in PARTS}

_background: set[asyncio.Task[Any]] = set()


async def drive(
    stream_id: uuid.UUID | str,
    deltas: AsyncIterator[SourceItem],
    *,
    on_token: TokenCallback | None = None,
) -> StreamBody:
    """Claim the stream, generate it to a final status, and return its final body.

    Raises StreamError(already_claimed) if the stream is not pending (at most one driver,
    ever; a stream created ``claimed`` in this process is this call's), and
    StreamError(unavailable) if its end could not be recorded through a long database
    outage. The deltas are closed in every case.
    """
    stream_id = str(stream_id)
    group = services.take_claim(stream_id)
    if group is None:
        try:
            stream = await run_in_db(services.stream_claim, stream_id=stream_id)
        except BaseException:
            await _aclose(deltas)
            raise
        if stream is None:
            await _aclose(deltas)
            await run_in_db(stream_get, stream_id=stream_id)  # unknown: unknown_stream
            raise StreamError(StreamError.ALREADY_CLAIMED, "This stream already has a driver.")
        group = stream.group
        await _announce_streaming(stream_id, group)
    # A stream created claimed was never pending for anyone: no status changed, and a
    # burst of prompts does not wait on the layer before its LLM calls start.
    return await Generation(stream_id, group, deltas, on_token).run()


async def claim_here(stream_id: uuid.UUID | str) -> bool:
    """Claim a pending stream for this process, for a stream created unclaimed (say by
    a form's POST, which may run in another process than the socket that drives it).
    True for exactly one claimer, ever, across processes; ``drive`` here then takes the
    claim without a transaction of its own, and must follow at once (else the stream
    times out after a lease, as one created ``claimed``). False when another driver has
    it or it ended; StreamError(unknown_stream) for an unknown id."""
    stream = await run_in_db(services.stream_claim, stream_id=stream_id)
    if stream is None:
        await run_in_db(stream_get, stream_id=stream_id)  # unknown: unknown_stream
        return False
    services.keep_claim(str(stream.id), stream.group)
    await _announce_streaming(str(stream.id), stream.group)
    return True


async def _announce_streaming(stream_id: str, group: str) -> None:
    """Tell the stream's viewers it left ``pending`` (the claimer's, once)."""
    await aannounce(group, [active_status_frame(stream_id, Status.STREAMING)])


def drive_in_background(
    stream_id: uuid.UUID | str,
    deltas: AsyncIterator[SourceItem],
    *,
    on_token: TokenCallback | None = None,
) -> asyncio.Task[StreamBody]:
    """Run ``drive`` as a task of its own that outlives the caller (a websocket consumer
    that daphne tears down when its client leaves, an HTTP response whose client went
    away). A strong reference is kept, and stopping the server ends it as ``error``
    after saving what its driver was shown."""
    _hook_server_shutdown()
    task = asyncio.create_task(
        drive(stream_id, deltas, on_token=on_token), name=f"drive-{stream_id}"
    )
    _background.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("driver task %s failed", task.get_name(), exc_info=task.exception())


async def cancel_stream(stream_id: uuid.UUID | str) -> bool:
    """Stop a stream's generation wherever its driver runs; it ends ``cancelled`` with
    the text its driver was shown. A pending stream, or one whose driver does not
    acknowledge within ``STREAMING_CANCEL_ACK_SECONDS`` (its process died), is cancelled
    on the spot. Returns False for a stream that is already final."""
    stream = await run_in_db(stream_get, stream_id=stream_id)
    if stream.is_final:
        return False
    if stream.status == Status.PENDING:
        cancelled = await run_in_db(services.stream_cancel_now, stream_id=stream.id)
        if cancelled is not None:
            return True
    hub = await get_hub()
    if not await hub.request_cancel(str(stream.id), ack_within=app_settings.CANCEL_ACK_SECONDS):
        logger.info("stream %s: no driver answered the cancel; cancelled here", stream.id)
        await run_in_db(services.stream_cancel_now, stream_id=stream.id)
    return True


async def _aclose(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.warning("closing the delta iterator failed", exc_info=True)


# --- stopping the server ---------------------------------------------------------------


async def stop_background_drivers(grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
    """End every background driver as ``error`` (SERVER_STOPPED) after saving what its
    driver was shown, and every stream claimed here but not yet driven; wait at most
    ``grace`` seconds."""
    tasks = list(_background)
    for task in tasks:
        task.cancel()
    leftovers = services.take_all_claims()
    ends = [
        run_in_db(services.stream_settle_stopped, stream_id=stream_id, error=SERVER_STOPPED)
        for stream_id in leftovers
    ]
    waiting = [*tasks, *(asyncio.ensure_future(end) for end in ends)]
    if waiting:
        await asyncio.wait(waiting, timeout=grace)


_shutdown_hooked = False


def _hook_server_shutdown() -> None:
    """Under daphne (Twisted), stop the drivers before the reactor stops, while the event
    loop still runs. Under other servers a stopped process's streams are reaped."""
    global _shutdown_hooked
    reactor = sys.modules.get("twisted.internet.reactor")
    if _shutdown_hooked or reactor is None:
        return
    from twisted.internet import defer

    reactor.addSystemEventTrigger(
        "before",
        "shutdown",
        lambda: defer.Deferred.fromFuture(asyncio.ensure_future(stop_background_drivers())),
    )
    _shutdown_hooked = True


# --- one generation ----------------------------------------------------------------------


class Generation:
    """The state of one stream being driven, shared by its consumer task (the token
    path) and the process writer. Both run on one event loop: no locks."""

    def __init__(
        self,
        stream_id: str,
        group: str,
        deltas: AsyncIterator[SourceItem],
        on_token: TokenCallback | None,
    ) -> None:
        self.stream_id = stream_id
        self.group = group
        self.deltas = deltas
        self.on_token = on_token
        self.batcher = PartBatcher(
            max_chars=app_settings.FLUSH_MAX_CHARS, max_delay=app_settings.FLUSH_MAX_DELAY
        )
        self.writer = get_writer()
        # The writer's side.
        self.pending: list[Batch] = []
        self.inflight: services.ChunkWrite | None = None
        self.next_seq = 0
        self.written_parts: dict[str, list[str]] = {part: [] for part in PARTS}
        self.renewed_at = time.monotonic()
        self.failing_since: float | None = None
        self.first_token_at: datetime | None = None
        self.first_token_written = False
        self.ending: tuple[Status, str, Finish | None] | None = None
        self.done = False
        self.outcome: asyncio.Future[Stream | None] = asyncio.get_running_loop().create_future()
        # The token path's side.
        self.stop: tuple[Status, str] | None = None
        self.awaiting_delta = False
        self.started_at = self.last_delta_at = time.monotonic()
        self.settled_elsewhere = False
        self.interrupted = False  # the drive itself was cancelled (a server stopping)
        self.write_error: str | None = None
        self.consumer: asyncio.Task[tuple[Status, str, Finish | None]] | None = None

    async def run(self) -> StreamBody:
        hub = await get_hub()
        hub.register_driver(self.stream_id, self.request_cancel)
        self.writer.add(self)
        self.consumer = asyncio.create_task(self._consume())
        ACTIVE_STREAMS.inc()
        try:
            try:
                status, error, report = await asyncio.shield(self.consumer)
            except asyncio.CancelledError:
                # The drive itself was cancelled (server shutdown): stop, save, say why.
                self.interrupted = True
                self.request_stop(Status.ERROR, SERVER_STOPPED)
                status, error, report = await self.consumer
        finally:
            hub.unregister_driver(self.stream_id)
        self._take(self.batcher.flush())
        if self.write_error is not None:
            status, error = Status.ERROR, self.write_error
        try:
            stream = await self._end(status, error, report)
        finally:
            self.writer.remove(self)
            ACTIVE_STREAMS.dec()
        if self.interrupted:
            raise asyncio.CancelledError
        return await self._final_body(stream)

    # --- stopping ----------------------------------------------------------------------

    def request_cancel(self) -> None:
        self.request_stop(Status.CANCELLED, "")

    def request_stop(self, status: Status, error: str) -> None:
        """End the generation at the next wait for a delta (or now, if it is waiting)."""
        if self.stop is None:
            self.stop = (status, error)
        if self.awaiting_delta and self.consumer is not None:
            self.consumer.cancel()

    # --- the token path ----------------------------------------------------------------

    async def _consume(self) -> tuple[Status, str, Finish | None]:
        iterator = aiter(self.deltas)
        report: Finish | None = None
        try:
            while self.stop is None:
                self.awaiting_delta = True
                try:
                    item = await anext(iterator)
                except StopAsyncIteration:
                    return Status.DONE, "", report
                finally:
                    self.awaiting_delta = False
                if isinstance(item, Finish):
                    report = item
                    continue
                delta = as_delta(item)
                if not delta.text:
                    continue
                self.last_delta_at = time.monotonic()
                if self.first_token_at is None:
                    self.first_token_at = timezone.now()
                    TIME_TO_FIRST_TOKEN.observe(self.last_delta_at - self.started_at)
                _TOKENS[delta.part].inc()
                if (text := clean_text(delta.text)) is not delta.text:
                    delta = Delta(text, delta.part)
                await self._emit(delta)
                self._feed(delta)
            return (*self.stop, report)
        except asyncio.CancelledError:
            if self.stop is not None:
                return (*self.stop, report)
            raise
        except Exception as exc:
            logger.warning("stream %s: the text source failed", self.stream_id, exc_info=True)
            return Status.ERROR, get_adapter().error_message(exc), report
        finally:
            await _aclose(iterator)

    async def _emit(self, delta: Delta) -> None:
        if self.on_token is None:
            return
        try:
            await self.on_token(delta)
        except Exception as exc:
            # The driver's client went away: the generation goes on for everyone else.
            logger.info("stream %s: on_token failed (%r); tokens stop", self.stream_id, exc)
            self.on_token = None

    def _feed(self, delta: Delta) -> None:
        deadline_before = self.batcher.deadline
        batches = self.batcher.feed(delta, time.monotonic())
        self._take(batches)
        if batches or self.batcher.deadline != deadline_before:
            self.writer.poke()

    def _take(self, batches: list[Batch]) -> None:
        if batches:
            self.pending.extend(batches)

    # --- the writer's side -------------------------------------------------------------

    def check(self, now: float) -> None:
        """The writer's look at this stream each round: the time fallback of its batcher,
        a source silent for too long, a database away for too long."""
        if self.batcher.due(now):
            self._take(self.batcher.flush())
        idle = app_settings.DELTA_IDLE_TIMEOUT
        if idle and self.awaiting_delta and now - self.last_delta_at >= idle:
            self.request_stop(Status.TIMEOUT, IDLE_MESSAGE.format(seconds=idle))
        if self.failing_since is None:
            return
        if self.ending is None and now - self.failing_since >= app_settings.DB_RETRY_SECONDS:
            logger.warning("stream %s: chunk write failed for good", self.stream_id)
            self.inflight, self.pending = None, []
            self.write_error = WRITE_FAILED
            self.failing_since = None
            self.request_stop(Status.ERROR, WRITE_FAILED)
        elif self.ending is not None and now - self.failing_since >= FINAL_STATUS_RETRY_SECONDS:
            self.ended(None, failed=True)

    def wake_at(self, renew_every: float) -> float:
        """When the writer must look at this stream again, at the latest."""
        wake = self.renewed_at + renew_every
        if (deadline := self.batcher.deadline) is not None:
            wake = min(wake, deadline)
        if (idle := app_settings.DELTA_IDLE_TIMEOUT) and self.awaiting_delta:
            wake = min(wake, self.last_delta_at + idle)
        return wake

    def take_write(self) -> services.ChunkWrite:
        first_token_at = None if self.first_token_written else self.first_token_at
        self.inflight = services.ChunkWrite(
            self.stream_id, self.next_seq, self.pending, first_token_at
        )
        self.pending = []
        return self.inflight

    def take_end(self) -> End:
        if self.ending is None:
            raise RuntimeError(f"stream {self.stream_id} is not ending")
        status, error, report = self.ending
        tail = [] if self.write_error is not None else self.pending
        first_token_at = None if self.first_token_written else self.first_token_at
        written = {part: "".join(texts) for part, texts in self.written_parts.items()}
        return End(status, error, report, tail, self.next_seq, first_token_at, written)

    def written(self, write: services.ChunkWrite) -> None:
        for part, text in write.batches:
            self.written_parts[part].append(text)
        self.next_seq = write.last_seq + 1
        self.inflight = None
        self.failing_since = None
        self.renewed_at = time.monotonic()
        self.first_token_written = self.first_token_written or write.first_token_at is not None

    def refused(self, *, failed: bool) -> None:
        """The database took none of it: settled by someone else, or refused for good."""
        self.inflight, self.pending = None, []
        if failed:
            self.write_error = WRITE_FAILED
        else:
            logger.info("stream %s was settled elsewhere; its driver stops", self.stream_id)
            self.settled_elsewhere = True
        self.request_cancel()

    def write_failed(self, now: float) -> None:
        if self.failing_since is None:
            self.failing_since = now

    def ended(self, stream: Stream | None, *, failed: bool) -> None:
        self.done = True
        self.ending = None
        if self.outcome.done():
            return
        if failed:
            self.outcome.set_exception(
                StreamError(StreamError.UNAVAILABLE, "The stream's end could not be recorded.")
            )
        else:
            self.outcome.set_result(stream)

    async def _end(self, status: Status, error: str, report: Finish | None) -> Stream | None:
        """Hand the end to the writer (with the last batches) and wait for it, even
        through a cancel (a server stopping): the end is what it must not lose."""
        if self.settled_elsewhere:
            return None
        self.ending = (status, error, report)
        self.writer.poke()
        while not self.outcome.done():
            try:
                await asyncio.shield(self.outcome)
            except asyncio.CancelledError:
                self.interrupted = True
        return self.outcome.result()

    async def _final_body(self, stream: Stream | None) -> StreamBody:
        if stream is not None:
            return final_body(stream)
        try:  # settled by someone else: the database says how it ended
            return await run_in_db(body_of, self.stream_id)
        except StreamError:
            # Deleted while it ran: what is left to say is that it stopped.
            return StreamBody("", "", Status.CANCELLED, self.next_seq - 1, None)
