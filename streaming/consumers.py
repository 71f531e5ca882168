"""The websocket side of the component, for any consumer: ``resume`` and ``cancel``
frames in, and each stream's ``chunk`` and ``status`` frames out, exactly once.

Exactly once rests on one fact of Channels: a consumer handles its messages one at a
time. A resume joins the stream's group first and reads the database second; the live
chunks that arrive meanwhile wait in the socket's queue until the resume's reply is
sent, and are then dropped up to the cursor. A live chunk that skips ahead (the channel
layer dropped one for a slow socket) makes the mixin read the missing chunks from the
database before it forwards it: they are committed, since frames go out after commit.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from channels.consumer import get_handler_name

from streaming.adapter import get_adapter
from streaming.asyncdb import run_in_db
from streaming.conf import app_settings
from streaming.driver import cancel_stream
from streaming.errors import StreamError
from streaming.frames import FRAMES_EVENT, Frame, chunk_frame, snapshot_frame, status_frame
from streaming.models import Stream
from streaming.outages import TRANSIENT_ERRORS
from streaming.selectors import catch_up, stream_get

logger = logging.getLogger(__name__)

#: A socket follows at most this many live streams; the oldest is forgotten first.
MAX_TRACKED_STREAMS = 64
#: Close code for a socket that floods frames: the private-use twin of 1008 (policy
#: violation), since daphne's websocket library lets applications send only 1000 and
#: 3000-4999.
FLOOD_CLOSE_CODE = 4008
UNAVAILABLE = "unavailable"
#: Unicode as is, not \uXXXX: a CJK or emoji text is a third to half the bytes. One
#: encoder for all frames (``json.dumps`` with options builds one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False)


class FloodError(Exception):
    """More client frames than the rate limit allows: the socket is closed with 4008."""


class FrameError(Exception):
    """A client frame that is refused with an ``error`` frame; the socket stays open."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse_stream_id(value: Any) -> uuid.UUID:
    if not isinstance(value, str):
        raise FrameError("invalid_frame", "stream_id must be a string.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise FrameError(StreamError.NOT_FOUND, "No such stream.") from None


class StreamConsumerMixin:
    """Mix into an ``AsyncJsonWebsocketConsumer``.

    Call ``stream_follow(stream_id)`` when the socket learns of a new stream (for
    example when it relays the message that announced it), and route client frames
    through ``stream_receive_frame``. The group handler ``stream_frames`` needs no call.
    """

    #: Channel-layer events whose handlers reach the database only through
    #: ``run_in_db`` (which refreshes connections itself), so they skip Channels'
    #: per-message ``close_old_connections``, a round trip to its single database
    #: thread: every socket pays it for every chunk, and at 1,000 viewers it doubled the
    #: fanout latency. A consumer adds its own such events.
    direct_events: frozenset[str] = frozenset({FRAMES_EVENT})

    max_frame_bytes: int = 256 * 1024
    #: Token bucket for client frames: a sustained rate and a burst, per socket.
    max_frames_per_second: float = 20.0
    max_frame_burst: float = 60.0

    # --- state ------------------------------------------------------------------------

    @property
    def stream_cursors(self) -> dict[str, int]:
        """stream id → last seq this socket has been sent (insertion-ordered)."""
        if not hasattr(self, "_stream_cursors"):
            self._stream_cursors: dict[str, int] = {}
        return self._stream_cursors

    @property
    def stream_groups(self) -> set[str]:
        if not hasattr(self, "_stream_groups"):
            self._stream_groups: set[str] = set()
        return self._stream_groups

    def stream_follow(self, stream_id: str, after: int = -1) -> None:
        cursors = self.stream_cursors
        cursors.pop(stream_id, None)
        if len(cursors) >= MAX_TRACKED_STREAMS:
            cursors.pop(next(iter(cursors)))
        cursors[stream_id] = after

    async def stream_leave_groups(self) -> None:
        """On disconnect: leave every group joined. A layer that is away then is logged,
        not raised: the membership expires with the layer's ``group_expiry``."""
        for group in self.stream_groups:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except TRANSIENT_ERRORS as exc:
                logger.warning("could not leave group %s: %r", group, exc)

    # --- client frames -------------------------------------------------------------------

    def _take_frame_token(self) -> None:
        now = time.monotonic()
        tokens, last = getattr(self, "_frame_bucket", (self.max_frame_burst, now))
        tokens = min(self.max_frame_burst, tokens + (now - last) * self.max_frames_per_second)
        if tokens < 1:
            raise FloodError
        self._frame_bucket = (tokens - 1, now)

    def decode_frame(self, text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
        """Parse one client frame into a dict with a string ``type``, or raise FrameError
        (or FloodError past the rate limit)."""
        self._take_frame_token()
        raw = text_data if text_data is not None else (bytes_data or b"").decode("utf-8", "replace")
        if len(raw.encode("utf-8")) > self.max_frame_bytes:
            raise FrameError(
                "frame_too_large", f"Frames are limited to {self.max_frame_bytes} bytes."
            )
        try:
            content = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise FrameError("invalid_json", "The frame is not valid JSON.") from None
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            raise FrameError("invalid_frame", "A frame is a JSON object with a string 'type'.")
        return content

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        return _ENCODER.encode(content)

    async def send_error(self, code: str, detail: str) -> None:
        await self.send_json({"type": "error", "code": code, "detail": detail})

    async def stream_receive_frame(self, content: dict[str, Any]) -> bool:
        """Serve ``resume`` and ``cancel``; False for any other type (the caller's)."""
        kind = content["type"]
        if kind == "resume":
            after = content.get("after", -1)
            if isinstance(after, bool) or not isinstance(after, int) or after < -1:
                raise FrameError("invalid_frame", "after must be an integer >= -1.")
            await self.stream_resume(parse_stream_id(content.get("stream_id")), after)
            return True
        if kind == "cancel":
            stream = await self._accessible_stream(parse_stream_id(content.get("stream_id")))
            await cancel_stream(stream.id)
            return True
        return False

    async def stream_can_access(self, stream: Stream) -> bool:
        return get_adapter().can_access(self.scope.get("user"), stream)

    async def _accessible_stream(self, stream_id: uuid.UUID) -> Stream:
        try:
            stream = await run_in_db(stream_get, stream_id=stream_id)
        except StreamError as exc:
            raise FrameError(exc.code, exc.detail) from None
        if not await self.stream_can_access(stream):
            raise FrameError(StreamError.NOT_FOUND, "No such stream.")
        return stream

    async def stream_resume(self, stream_id: uuid.UUID, after: int) -> None:
        stream = await self._accessible_stream(stream_id)
        if stream.group not in self.stream_groups:
            await self.channel_layer.group_add(stream.group, self.channel_name)
            self.stream_groups.add(stream.group)
        key = str(stream.id)
        last_seq = await self._send_catch_up(
            stream, after, snapshot_after=app_settings.RESUME_SNAPSHOT_AFTER
        )
        if stream.is_final:
            self.stream_cursors.pop(key, None)
            await self.send_json(status_frame(stream))
        else:
            self.stream_follow(key, last_seq)

    async def _send_catch_up(
        self, stream: Stream, after: int, snapshot_after: int | None = None
    ) -> int:
        """Send what follows ``after``: the chunks, or one snapshot. Returns the last seq."""
        reply = await run_in_db(
            catch_up,
            stream,
            after=after,
            snapshot_after=snapshot_after,
            snapshot_max_chars=app_settings.SNAPSHOT_MAX_CHARS,
        )
        key = str(stream.id)
        if reply.snapshot:
            await self.send_json(
                snapshot_frame(key, reply.snapshot_text, reply.last_seq, reply.status)
            )
        for seq, text in reply.chunks:
            await self.send_json(chunk_frame(key, seq, text))
        return reply.last_seq

    # --- group events ----------------------------------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] in self.direct_events:
            await getattr(self, get_handler_name(message))(message)
        else:
            await super().dispatch(message)  # type: ignore[misc]

    async def stream_frames(self, event: dict[str, Any]) -> None:
        """The frames of one announcement in order: chunks, a status, or both."""
        for frame in event["frames"]:
            if frame["type"] == "chunk":
                await self._forward_chunk(frame)
            else:
                await self._forward_status(frame)

    async def _forward_chunk(self, frame: Frame) -> None:
        stream_id, seq = frame["stream_id"], frame["seq"]
        cursor = self.stream_cursors.get(stream_id)
        if cursor is None or seq <= cursor:
            return
        if seq > cursor + 1:
            await self._repair(stream_id, cursor)
        else:
            await self.send_json(frame)
            self.stream_cursors[stream_id] = seq

    async def _forward_status(self, frame: Frame) -> None:
        stream_id = frame["stream_id"]
        cursor = self.stream_cursors.get(stream_id)
        final_seq = frame.get("last_seq")
        if cursor is not None and final_seq is not None and cursor < final_seq:
            await self._repair(stream_id, cursor)
        if final_seq is not None:
            self.stream_cursors.pop(stream_id, None)
        await self.send_json(frame)

    async def _repair(self, stream_id: str, cursor: int) -> None:
        """Send the committed chunks after ``cursor`` that the channel layer lost (or one
        snapshot, if they were purged meanwhile). With the database away, the client's
        own gap rule (``resume``) takes over."""
        try:
            stream = await run_in_db(stream_get, stream_id=stream_id, settle_expired=False)
            last_seq = await self._send_catch_up(stream, cursor)
        except TRANSIENT_ERRORS:
            logger.warning("stream %s: gap repair failed; the client will resume", stream_id)
            return
        logger.info("stream %s: repaired the chunks after %d", stream_id, cursor)
        self.stream_cursors[stream_id] = last_seq
