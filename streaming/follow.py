"""Catch up, then live, exactly once: the one implementation every transport shares
(the websocket mixin, the Server-Sent Events view, the AI SDK encodings).

A follower holds, for each stream a connection follows, the last seq it was sent. The
transport joins the stream's group first and asks the follower for the catch-up
second, so what is committed after the read arrives live; the live frames are then
dropped up to the cursor. A live chunk that skips ahead (the channel layer dropped one
for a slow reader) makes the follower read the missing chunks from the database before
it passes the chunk on: they are committed, since frames go out after commit. The same
repair answers a silence that may hide a lost final status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from streaming.asyncdb import run_in_db
from streaming.conf import app_settings
from streaming.errors import StreamError
from streaming.frames import Frame, chunk_frame, snapshot_frame, status_frame
from streaming.metrics import GAPS_REPAIRED
from streaming.outages import TRANSIENT_ERRORS
from streaming.selectors import catch_up

logger = logging.getLogger(__name__)

#: A connection follows at most this many live streams; the oldest is forgotten first.
MAX_FOLLOWED_STREAMS = 64


class Follower:
    """The streams of one connection, and what it was sent of each.

    ``snapshots=False``: catch-ups and repairs send chunks whenever they are kept, a
    snapshot only for chunks that were purged (for readers that number chunks).
    """

    def __init__(self, *, snapshots: bool = True) -> None:
        self.snapshots = snapshots
        self.cursors: dict[str, int] = {}  # stream id → last seq sent; insertion-ordered
        self.finished: dict[str, None] = {}  # streams whose final status was sent

    def follow(self, stream_id: str, after: int = -1) -> None:
        """Follow a stream from ``after`` (a new stream the connection learned of)."""
        self.cursors.pop(stream_id, None)
        self.finished.pop(stream_id, None)
        if len(self.cursors) >= MAX_FOLLOWED_STREAMS:
            self.cursors.pop(next(iter(self.cursors)))
        self.cursors[stream_id] = after

    def follows(self, stream_id: str) -> bool:
        return stream_id in self.cursors

    def _finish(self, stream_id: str) -> None:
        """The final status was sent: stop following, and send no status again."""
        self.cursors.pop(stream_id, None)
        if len(self.finished) >= MAX_FOLLOWED_STREAMS:
            self.finished.pop(next(iter(self.finished)))
        self.finished[stream_id] = None

    async def catch_up(
        self, stream_id: str, after: int, *, snapshot_after: int | None = None
    ) -> list[Frame]:
        """What the connection lacks after ``after``: the persisted chunks or one
        snapshot, then, for a stream that is final, its status. Call it once the stream's
        group is joined. The stream is followed afterwards unless it was final."""
        self.follow(stream_id, after)
        return await self._read(stream_id, after, snapshot_after=snapshot_after)

    async def live(self, frames: Iterable[Frame]) -> list[Frame]:
        """The frames of one group event that this connection must be sent, in order:
        each chunk once, gaps filled from the database first."""
        out: list[Frame] = []
        for frame in frames:
            stream_id = frame["stream_id"]
            cursor = self.cursors.get(stream_id)
            if cursor is None:
                # Not followed: its chunks are not this connection's, but every change
                # of status is (once).
                if frame["type"] == "status" and stream_id not in self.finished:
                    if frame.get("last_seq") is not None:
                        self._finish(stream_id)
                    out.append(frame)
                continue
            if frame["type"] == "chunk":
                if frame["seq"] == cursor + 1:
                    out.append(frame)
                    self.cursors[stream_id] = frame["seq"]
                elif frame["seq"] > cursor + 1:
                    # Lost broadcasts: the chunks are committed, read them. With the
                    # database away, pass the gap on: the client's rule resumes.
                    repaired = await self.repair(stream_id)
                    out.extend([frame] if repaired is None else repaired)
            elif frame.get("last_seq") is None:  # a status on the way (streaming)
                out.append(frame)
            else:
                if cursor < frame["last_seq"]:
                    out.extend(await self.repair(stream_id) or [])  # ends with the status
                if stream_id in self.cursors:  # not repaired: the status as it came
                    self._finish(stream_id)
                    out.append(frame)
        return out

    async def repair(self, stream_id: str) -> list[Frame] | None:
        """The committed chunks after the cursor (or one snapshot, if they were purged
        meanwhile), and the final status if the stream ended; None when the database
        could not be read (the client's own rules, a gap or silence → resume, take over)."""
        cursor = self.cursors.get(stream_id)
        if cursor is None:
            return []
        try:
            frames = await self._read(stream_id, cursor)
        except StreamError:
            del self.cursors[stream_id]  # deleted meanwhile
            return []
        except TRANSIENT_ERRORS:
            logger.warning("stream %s: repair failed; the client will resume", stream_id)
            return None
        if frames:
            GAPS_REPAIRED.inc()
            logger.info("stream %s: repaired what followed seq %d", stream_id, cursor)
        return frames

    async def _read(
        self, stream_id: str, after: int, *, snapshot_after: int | None = None
    ) -> list[Frame]:
        reply = await run_in_db(
            catch_up,
            stream_id=stream_id,
            after=after,
            snapshot_after=snapshot_after,
            snapshot_max_chars=app_settings.SNAPSHOT_MAX_CHARS,
            snapshots=self.snapshots,
        )
        stream = reply.stream
        frames: list[Frame] = []
        if reply.snapshot is not None:
            frames.append(
                snapshot_frame(
                    stream_id,
                    text=reply.snapshot.text,
                    reasoning=reply.snapshot.reasoning,
                    last_seq=reply.last_seq,
                    status=stream.status,
                )
            )
        frames.extend(chunk_frame(stream_id, c.seq, c.part, c.text) for c in reply.chunks)
        if stream.is_final:
            self._finish(stream_id)
            frames.append(status_frame(stream))
        elif stream_id in self.cursors:
            self.cursors[stream_id] = max(self.cursors[stream_id], reply.last_seq)
        return frames
