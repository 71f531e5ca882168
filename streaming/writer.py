"""The process writer: one task per process (per event loop) that persists what every
stream it drives has batched, in one transaction per round.

A round commits, together, the due batches of every stream (each stream's UPDATE still
guarded by its status and last seq, so seqs stay gapless), the lease renewals of the
quiet ones and the final statuses of those that ended. Rounds start at most one
``STREAMING_FLUSH_MIN_INTERVAL`` apart while there is work; an idle writer starts one
at once. So the database sees about one transaction per interval however many streams
run, a fast model's sentences share a write, and a slow one's first sentence waits for
nothing. The frames of a round go out after its commit, one group message per stream.

The writer never waits on the token path: streams hand it batches and wake it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import DatabaseError, transaction

from streaming import services
from streaming.asyncdb import run_in_db
from streaming.conf import app_settings
from streaming.core.batching import Batch
from streaming.core.deltas import Finish
from streaming.core.lifecycle import Status
from streaming.frames import Frame, aannounce_many, chunk_frames, status_frame
from streaming.metrics import CHUNKS_PER_WRITE, WRITE_SECONDS, WRITES
from streaming.models import Stream
from streaming.outages import DB_OUTAGE_ERRORS

if TYPE_CHECKING:
    from streaming.driver import Generation

logger = logging.getLogger(__name__)

#: How long a final status is retried through a database outage. Longer than chunk
#: writes: a stream left active is only settled by the reaper, as timeout, which tells
#: users less than the real reason.
FINAL_STATUS_RETRY_SECONDS = 300.0
_MAX_BACKOFF = 1.0


@dataclass
class End:
    """What a generation asks the writer to record as its end."""

    status: Status
    error: str
    report: Finish | None
    tail: list[Batch]
    first_seq: int
    first_token_at: datetime | None
    #: The text of the chunks before ``first_seq`` per part, as the driver wrote them.
    written: dict[str, str]


@dataclass
class Round:
    """One transaction's worth of work, and what it did."""

    appends: list[services.ChunkWrite]
    renewals: list[str]
    ends: dict[str, End]
    accepted: dict[str, bool] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)
    ended: dict[str, Stream | None] = field(default_factory=dict)
    #: Streams whose chunks (or end) the database refused for good, not for an outage.
    failed: set[str] = field(default_factory=set)


def write_round(work: Round) -> Round:
    """Commit a round in one transaction (sync, in a database thread). A final status
    runs in a savepoint of its own, so a project hook that raises undoes only its own
    stream's end; a database outage undoes the round, which is then retried whole."""
    with transaction.atomic():
        if work.appends:
            work.accepted = services.chunks_append(writes=work.appends)
        if work.renewals:
            work.stopped = services.streams_renew_leases(stream_ids=work.renewals)
        for stream_id, end in work.ends.items():
            try:
                with transaction.atomic():
                    work.ended[stream_id] = _end_or_recognise(stream_id, end)
            except DB_OUTAGE_ERRORS:
                raise
            except Exception:
                logger.exception("stream %s: could not record its final status", stream_id)
                work.failed.add(stream_id)
    return work


def write_each(work: Round) -> Round:
    """The round, one stream per transaction: after a round that the database refused
    for a reason other than an outage, so that one stream's bad row fails alone."""
    for write in work.appends:
        try:
            with transaction.atomic():
                work.accepted.update(services.chunks_append(writes=[write]))
        except DB_OUTAGE_ERRORS:
            raise
        except DatabaseError as exc:
            logger.warning("stream %s: chunks refused: %r", write.stream_id, exc)
            work.accepted[write.stream_id] = False
            work.failed.add(write.stream_id)
    rest = write_round(Round([], work.renewals, work.ends))
    work.stopped, work.ended = rest.stopped, rest.ended
    work.failed |= rest.failed
    return work


def _end_or_recognise(stream_id: str, end: End) -> Stream | None:
    stream = services.stream_end(
        stream_id=stream_id,
        status=end.status,
        error=end.error,
        first_seq=end.first_seq,
        tail=end.tail,
        report=end.report,
        first_token_at=end.first_token_at,
        written=end.written,
    )
    if stream is not None:
        return stream
    # A retry of an end that did commit (the connection broke before the answer) finds
    # the stream final with exactly its chunks: it is ours, and still to announce.
    row = Stream.objects.filter(id=stream_id).first()
    expected_last = end.first_seq + len(end.tail) - 1
    ours = row is not None and (row.status, row.error, row.last_seq) == (
        end.status,
        end.error,
        expected_last,
    )
    return row if ours else None


class Writer:
    """The loop's writer. Generations register while they run."""

    def __init__(self) -> None:
        self.generations: set[Generation] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last_start = float("-inf")
        self.backoff = 0.0

    def add(self, generation: Generation) -> None:
        self.generations.add(generation)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="streaming-writer")
        self.wake.set()

    def remove(self, generation: Generation) -> None:
        self.generations.discard(generation)

    def poke(self) -> None:
        self.wake.set()

    async def _run(self) -> None:
        while self.generations:
            try:
                await self._step()
            except Exception:
                # A bug here must not strand every stream of the process: log, go on.
                logger.exception("the writer's round failed")
                await asyncio.sleep(_MAX_BACKOFF)

    async def _step(self) -> None:
        """One look at the generations: a round if one is due, else a wait."""
        now = time.monotonic()
        ready_at = self.last_start + app_settings.FLUSH_MIN_INTERVAL + self.backoff
        if now < ready_at:
            await asyncio.sleep(ready_at - now)  # throttled: pokes need not wake us
            return
        work, wake_at = self._collect(now)
        if work is not None:
            self.last_start = now
            await self._commit(work)
            return
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), max(0.0, wake_at - now))

    def _collect(self, now: float) -> tuple[Round | None, float]:
        """The round due now, if any, and when to look again otherwise."""
        renew_every = app_settings.LEASE_SECONDS / 3
        appends: list[services.ChunkWrite] = []
        renewals: list[str] = []
        ends: dict[str, End] = {}
        wake_at = now + renew_every
        for generation in list(self.generations):
            generation.check(now)
            if generation.done:
                continue
            if generation.inflight is not None:
                appends.append(generation.inflight)  # a retry, exactly as first tried
            elif generation.ending is not None:
                ends[generation.stream_id] = generation.take_end()
            elif generation.pending:
                appends.append(generation.take_write())
            elif now >= generation.renewed_at + renew_every:
                renewals.append(generation.stream_id)
            wake_at = min(wake_at, generation.wake_at(renew_every))
        if appends or renewals or ends:
            return Round(appends, renewals, ends), wake_at
        return None, wake_at

    async def _commit(self, work: Round) -> None:
        started = time.monotonic()
        try:
            try:
                await run_in_db(write_round, work)
            except DB_OUTAGE_ERRORS:
                raise
            except DatabaseError as exc:
                logger.warning("a write round was refused (%r); writing each stream apart", exc)
                work.accepted.clear()
                await run_in_db(write_each, work)
        except DB_OUTAGE_ERRORS as exc:
            self.backoff = min(max(self.backoff * 2, 0.05), _MAX_BACKOFF)
            logger.warning("database away (%r); the write round is retried", exc)
            self._outage(work, time.monotonic())
            return
        self.backoff = 0.0
        WRITES.inc()
        WRITE_SECONDS.observe(time.monotonic() - started)
        CHUNKS_PER_WRITE.observe(
            sum(len(w.batches) for w in work.appends if work.accepted.get(w.stream_id))
            + sum(len(end.tail) for sid, end in work.ends.items() if work.ended.get(sid))
        )
        await self._settle(work)

    def _outage(self, work: Round, now: float) -> None:
        involved = {w.stream_id for w in work.appends} | set(work.ends)
        for generation in list(self.generations):
            if generation.stream_id in involved:
                generation.write_failed(now)

    async def _settle(self, work: Round) -> None:
        """Announce the round's frames, then hand each generation its outcome: a drive
        returns (and a stopping server exits) only once its end reached the layer."""
        by_id = {g.stream_id: g for g in self.generations}
        announcements: list[tuple[str, list[Frame]]] = []
        for write in work.appends:
            if write.stream_id in by_id and work.accepted.get(write.stream_id):
                frames = chunk_frames(write.stream_id, write.first_seq, write.batches)
                announcements.append((by_id[write.stream_id].group, frames))
        for stream_id, end in work.ends.items():
            stream = work.ended.get(stream_id)
            if stream is not None and stream_id not in work.failed:
                frames = chunk_frames(stream_id, end.first_seq, end.tail)
                announcements.append((stream.group, [*frames, status_frame(stream)]))
        await aannounce_many(announcements)

        for write in work.appends:
            if (generation := by_id.get(write.stream_id)) is None:
                continue
            if work.accepted.get(write.stream_id):
                generation.written(write)
            else:
                generation.refused(failed=write.stream_id in work.failed)
        for stream_id in work.stopped:
            if stream_id in by_id:
                by_id[stream_id].refused(failed=False)
        for stream_id in work.renewals:
            if stream_id in by_id and stream_id not in work.stopped:
                by_id[stream_id].renewed_at = time.monotonic()
        for stream_id in work.ends:
            if (generation := by_id.get(stream_id)) is not None:
                failed = stream_id in work.failed
                generation.ended(None if failed else work.ended.get(stream_id), failed=failed)


_writers: dict[asyncio.AbstractEventLoop, Writer] = {}


def get_writer() -> Writer:
    """This event loop's writer."""
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        for stale in [other for other in _writers if other.is_closed()]:
            del _writers[stale]
        writer = _writers[loop] = Writer()
    return writer
