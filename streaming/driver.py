"""The driver: one generation, from text deltas to a final status.

Three tasks share one event loop, so they share state without locks:

* the consumer awaits the next delta, hands it to ``on_token`` at once and feeds the
  sentence batcher; it never waits for the database;
* the persister writes completed batches (all that queued up during the previous write,
  in one transaction), flushes a batch whose delay ran out, and renews the lease when
  text is not flowing;
* the listener waits on the driver's own channel for a cancel from any process.

A cancel interrupts only the wait for the next delta: a token is either emitted and
persisted, or neither, so the driver's tokens always equal the persisted text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from channels.layers import get_channel_layer
from django.db import DatabaseError

from streaming import services
from streaming.adapter import get_adapter
from streaming.asyncdb import run_in_db
from streaming.conf import app_settings
from streaming.core.batching import SentenceBatcher
from streaming.core.lifecycle import Status
from streaming.core.text import clean_text
from streaming.errors import StreamError
from streaming.frames import aannounce, chunk_frames, finish_frames, status_frame
from streaming.outages import DB_OUTAGE_ERRORS
from streaming.selectors import get_stream_body, stream_get

if TYPE_CHECKING:
    from streaming.models import Stream

logger = logging.getLogger(__name__)

TokenCallback = Callable[[str], Awaitable[None]]
CANCEL_EVENT = "stream.cancel"
STOP_EVENT = "stream.driver_stop"
SERVER_STOPPED = "The server stopped while this text was being generated."
WRITE_FAILED = "The text could not be saved; it ends here."
#: How long the driver keeps trying to record a final status through a database outage.
#: Longer than chunk writes: a stream left active is only settled by the reaper, as
#: timeout, which tells users less than the real reason.
FINAL_STATUS_RETRY_SECONDS = 300.0

_background: set[asyncio.Task[Any]] = set()
#: Cancel listeners that outlive their generation until their stop message arrives.
_listeners: set[asyncio.Task[Any]] = set()


async def drive(
    stream_id: uuid.UUID | str,
    deltas: AsyncIterator[str],
    *,
    on_token: TokenCallback | None = None,
) -> str:
    """Claim the stream, generate it to a final status, and return its final text.

    Raises StreamError(already_claimed) if the stream is not pending: at most one
    driver, ever. The deltas are closed in every case.
    """
    layer = get_channel_layer()
    control = await layer.new_channel() if layer is not None else ""
    stream = await run_in_db(
        services.stream_claim, stream_id=stream_id, driver_channel=control, announce=False
    )
    if stream is None:
        await _aclose(deltas)
        raise StreamError(StreamError.ALREADY_CLAIMED, "This stream already has a driver.")
    await aannounce(stream.group, [status_frame(stream)])
    return await _Generation(str(stream.id), stream.group, deltas, on_token, layer, control).run()


def drive_in_background(
    stream_id: uuid.UUID | str,
    deltas: AsyncIterator[str],
    *,
    on_token: TokenCallback | None = None,
) -> asyncio.Task[str]:
    """Run ``drive`` as a task of its own that outlives the caller (a websocket consumer
    that daphne tears down when its client leaves). A strong reference is kept, and a
    server shutdown ends it as ``error`` after saving what it buffered."""
    _hook_server_shutdown()
    task = asyncio.create_task(
        drive(stream_id, deltas, on_token=on_token), name=f"drive-{stream_id}"
    )
    _background.add(task)
    task.add_done_callback(_forget)
    return task


SHUTDOWN_GRACE_SECONDS = 10.0


async def stop_background_drivers() -> None:
    """Cancel every background driver and wait (a bounded time) for each to save what it
    buffered and record ``error``."""
    tasks = list(_background)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_SECONDS)


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


def _forget(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("driver task %s failed", task.get_name(), exc_info=task.exception())


async def cancel_stream(stream_id: uuid.UUID | str) -> bool:
    """Stop a stream's generation wherever its driver runs; it ends ``cancelled`` after
    flushing what it buffered. A pending stream is cancelled on the spot. Returns False
    for a stream that is already final."""
    stream = await run_in_db(stream_get, stream_id=stream_id)
    if stream.status == Status.PENDING:
        cancelled = await run_in_db(
            services.stream_finish,
            stream_id=stream.id,
            status=Status.CANCELLED,
            only_from=[Status.PENDING],
        )
        if cancelled is not None:
            return True
        stream = await run_in_db(stream_get, stream_id=stream_id)  # claimed meanwhile
    if stream.status != Status.STREAMING or not stream.driver_channel:
        return False
    layer = get_channel_layer()
    await layer.send(stream.driver_channel, {"type": CANCEL_EVENT})
    return True


async def _aclose(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.warning("closing the delta iterator failed", exc_info=True)


class _Generation:
    def __init__(
        self,
        stream_id: str,
        group: str,
        deltas: AsyncIterator[str],
        on_token: TokenCallback | None,
        layer: Any,
        control: str,
    ) -> None:
        self.stream_id = stream_id
        self.group = group
        self.deltas = deltas
        self.on_token = on_token
        self.layer = layer
        self.control = control
        self.batcher = SentenceBatcher(
            max_chars=app_settings.FLUSH_MAX_CHARS, max_delay=app_settings.FLUSH_MAX_DELAY
        )
        self.pending: list[str] = []
        self.next_seq = 0
        self.wake = asyncio.Event()
        self.generating = True
        self.cancel_requested = False
        self.awaiting_delta = False
        self.settled_elsewhere = False
        self.write_error: str | None = None
        self.consumer: asyncio.Task[tuple[Status, str]] | None = None

    async def run(self) -> str:
        self.consumer = asyncio.create_task(self._consume())
        persister = asyncio.create_task(self._persist())
        listener = asyncio.create_task(self._listen()) if self.control else None
        interrupted = False
        try:
            status, error = await asyncio.shield(self.consumer)
        except asyncio.CancelledError:
            # The drive itself was cancelled (server shutdown): stop, save, say why.
            interrupted = True
            self.request_cancel()
            status, error = await self.consumer
            status, error = Status.ERROR, SERVER_STOPPED
        finally:
            if listener is not None:
                await self._stop_listener(listener)
        self._take(self.batcher.flush())
        self.generating = False
        self.wake.set()
        try:
            await persister
        except Exception:
            logger.exception("stream %s: persisting failed", self.stream_id)
            self.write_error = WRITE_FAILED
        if self.write_error is not None:
            status, error = Status.ERROR, self.write_error
        text = await self._finish(status, error)
        if interrupted:
            raise asyncio.CancelledError
        return text

    def request_cancel(self) -> None:
        self.cancel_requested = True
        if self.awaiting_delta and self.consumer is not None:
            self.consumer.cancel()

    # --- the token path -------------------------------------------------------------

    async def _consume(self) -> tuple[Status, str]:
        iterator = aiter(self.deltas)
        try:
            while not self.cancel_requested:
                self.awaiting_delta = True
                try:
                    delta = await anext(iterator)
                except StopAsyncIteration:
                    return Status.DONE, ""
                finally:
                    self.awaiting_delta = False
                if delta:
                    delta = clean_text(delta)
                    await self._emit(delta)
                    self._feed(delta)
            return Status.CANCELLED, ""
        except asyncio.CancelledError:
            if self.cancel_requested:
                return Status.CANCELLED, ""
            raise
        except Exception as exc:
            logger.info("stream %s: text source failed: %r", self.stream_id, exc)
            return Status.ERROR, get_adapter().error_message(exc)
        finally:
            await _aclose(iterator)

    async def _emit(self, delta: str) -> None:
        if self.on_token is None:
            return
        try:
            await self.on_token(delta)
        except Exception:
            # The driver's socket went away: the generation goes on for everyone else.
            logger.info("stream %s: on_token failed; tokens stop", self.stream_id, exc_info=True)
            self.on_token = None

    def _feed(self, delta: str) -> None:
        deadline_before = self.batcher.deadline
        batches = self.batcher.feed(delta, time.monotonic())
        if batches:
            self.pending.extend(batches)
        if batches or self.batcher.deadline != deadline_before:
            self.wake.set()

    def _take(self, text: str) -> None:
        if text:
            self.pending.append(text)

    # --- persistence, beside the token path ------------------------------------------

    async def _persist(self) -> None:
        """Write pending batches, at most one write per FLUSH_MIN_INTERVAL (the batches
        of a fast model share a write). What is pending when the text ends is left to
        ``_finish``, which writes it with the final status."""
        renew_every = app_settings.LEASE_SECONDS / 3
        min_interval = app_settings.FLUSH_MIN_INTERVAL
        last_write = time.monotonic()
        next_write_at = 0.0
        while True:
            now = time.monotonic()
            if self.batcher.due(now):
                self._take(self.batcher.flush())
            if not self.generating:
                return
            if self.pending and now >= next_write_at:
                if not await self._write():
                    return
                next_write_at = now + min_interval
                last_write = time.monotonic()
                continue
            if now >= last_write + renew_every:
                await self._renew_lease()
                last_write = time.monotonic()
                continue
            wait = last_write + renew_every - now
            if self.pending:
                wait = min(wait, next_write_at - now)
            deadline = self.batcher.deadline
            if deadline is not None:
                wait = min(wait, deadline - now)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=max(wait, 0.0))

    async def _write(self) -> bool:
        """Persist everything pending as the next chunks; False when the driver must stop."""
        texts, self.pending = self.pending, []
        try:
            last_seq = await _with_db_retry(
                services.chunk_append,
                stream_id=self.stream_id,
                group=self.group,
                first_seq=self.next_seq,
                texts=texts,
                announce=False,
            )
        except StreamError:
            logger.warning("stream %s was settled elsewhere; driver stops", self.stream_id)
            self.settled_elsewhere = True
        except DatabaseError as exc:
            # Reported on the stream itself (status error); the log only says why.
            logger.warning("stream %s: chunk write failed for good: %r", self.stream_id, exc)
            self.write_error = WRITE_FAILED
        else:
            await aannounce(self.group, chunk_frames(self.stream_id, self.next_seq, texts))
            self.next_seq = last_seq + 1
            return True
        self.request_cancel()
        return False

    async def _renew_lease(self) -> None:
        try:
            if not await run_in_db(services.stream_renew_lease, stream_id=self.stream_id):
                self.settled_elsewhere = True
                self.request_cancel()
        except DatabaseError:
            logger.warning("stream %s: lease renewal failed", self.stream_id, exc_info=True)

    async def _listen(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.control)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("stream %s: control channel failed", self.stream_id, exc_info=True)
                await asyncio.sleep(1.0)
                continue
            if message.get("type") == CANCEL_EVENT:
                self.request_cancel()
            elif message.get("type") == STOP_EVENT:
                return

    async def _stop_listener(self, listener: asyncio.Task[None]) -> None:
        """End the listener with a message, never a cancel: cancelling a pending
        channels-redis ``receive`` can lose a message meant for another socket of this
        process (measured: a stream's first status frame; under load, final ones). The
        listener exits when the message arrives; the driver does not wait for it."""
        _listeners.add(listener)
        listener.add_done_callback(_listeners.discard)
        try:
            await self.layer.send(self.control, {"type": STOP_EVENT})
        except Exception as exc:
            # The layer is away: the listener waits on, and ends with the process.
            logger.warning("stream %s: could not stop its listener: %r", self.stream_id, exc)

    async def _finish(self, status: Status, error: str) -> str:
        """Record the final status with the last chunks, in one transaction, retrying
        through a database outage as writes do; if that fails for too long, the reaper
        settles the stream once the database is back. Chunks the database refuses (or
        after a write failed for good) are dropped: the status then goes alone, as an
        error, and the text ends where the database stopped taking it."""
        tail = [] if self.write_error is not None else self.pending
        try:
            if not self.settled_elsewhere:
                try:
                    stream = await self._record_final(status, error, tail)
                except DatabaseError as exc:
                    if not tail or isinstance(exc, DB_OUTAGE_ERRORS):
                        raise
                    logger.warning("stream %s: last chunks refused: %r", self.stream_id, exc)
                    tail = []
                    stream = await self._record_final(Status.ERROR, WRITE_FAILED, tail)
                if stream is not None:
                    await aannounce(self.group, finish_frames(stream, self.next_seq, tail))
                    return stream.text
            return (await _with_db_retry(get_stream_body, stream_id=self.stream_id)).text
        except DatabaseError:
            logger.error("stream %s: could not record its final status", self.stream_id)
            return ""

    async def _record_final(self, status: Status, error: str, tail: list[str]) -> Stream | None:
        return await _with_db_retry(
            services.stream_finish,
            retry_for=FINAL_STATUS_RETRY_SECONDS,
            stream_id=self.stream_id,
            status=status,
            error=error,
            only_from=[Status.STREAMING],
            first_seq=self.next_seq,
            texts=tail,
            announce=False,
        )


async def _with_db_retry[T](
    fn: Callable[..., T], /, *, retry_for: float | None = None, **kwargs: Any
) -> T:
    """Run ``fn`` in the database thread, retrying while the database is away, with
    backoff, for ``retry_for`` seconds (default STREAMING_DB_RETRY_SECONDS) before the
    error propagates. Retrying is safe: every write the driver makes is guarded by a
    conditional UPDATE. Other database errors propagate at once."""
    if retry_for is None:
        retry_for = app_settings.DB_RETRY_SECONDS
    give_up_at = time.monotonic() + retry_for
    backoff = 0.05
    while True:
        try:
            return await run_in_db(fn, **kwargs)
        except DB_OUTAGE_ERRORS:
            if time.monotonic() >= give_up_at:
                raise
            logger.warning("database call %s failed; retrying", fn.__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
