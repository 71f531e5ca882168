"""The websocket side of the component, for any consumer: ``resume`` and ``cancel``
frames in, each stream's ``chunk`` and ``status`` frames out exactly once (through the
shared ``Follower``), ``token`` frames to the socket that drives a stream.

Exactly once rests on one fact of Channels: a consumer handles its messages one at a
time. A resume joins the stream's group first and reads the database second; the live
chunks that arrive meanwhile wait in the socket's queue until the resume's reply is
sent, and are then dropped up to the cursor.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from channels.consumer import get_handler_name

from streaming.adapter import get_adapter
from streaming.asyncdb import run_in_db
from streaming.conf import app_settings
from streaming.core.deltas import Delta
from streaming.driver import SourceItem, cancel_stream, claim_here, drive_in_background
from streaming.errors import StreamError
from streaming.flood import count_frame
from streaming.follow import Follower
from streaming.frames import FRAMES_EVENT, Frame, encode_frame, token_frame
from streaming.models import Stream
from streaming.outages import TRANSIENT_ERRORS
from streaming.selectors import stream_get
from streaming.services import stream_settle_if_expired

logger = logging.getLogger(__name__)

#: Close code for a socket that floods frames: the private-use twin of 1008 (policy
#: violation), since daphne's websocket library lets applications send only 1000 and
#: 3000-4999.
FLOOD_CLOSE_CODE = 4008
UNAVAILABLE_DETAIL = "The server is briefly unavailable; try again."


_CANCEL_FAILURES: tuple[type[BaseException], ...] = (StreamError, *TRANSIENT_ERRORS)


class FloodError(Exception):
    """More client frames than the rate limit allows: the socket is closed with 4008."""


class FrameError(StreamError):
    """A client frame refused with an ``error`` frame; the socket stays open."""


def parse_stream_id(value: Any) -> uuid.UUID:
    if not isinstance(value, str):
        raise FrameError("invalid_frame", "stream_id must be a string.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise FrameError(StreamError.NOT_FOUND, "No such stream.") from None


def parse_after(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise FrameError("invalid_frame", "after must be an integer >= -1.")
    return value


class StreamConsumerMixin:
    """Mix into an ``AsyncJsonWebsocketConsumer`` (before it in the bases).

    A consumer joins its group (``stream_join``) in ``connect``, calls
    ``stream_follow(stream_id)`` when its socket learns of a new stream (when it relays
    the message that announced it), ``stream_drive(stream_id, deltas)`` to make its
    socket a stream's driver (a stream it created ``claimed``, or one it won with
    ``await stream_claim(stream_id)``), and handles its own frames in
    ``receive_frame``. The mixin's ``receive`` (limits, errors), ``disconnect`` and group
    handler need no call; a consumer that overrides ``disconnect`` calls
    ``stream_disconnect()``.
    """

    #: Channel-layer events whose handlers reach the database only through
    #: ``run_in_db`` (which refreshes connections itself), so they skip Channels'
    #: per-message ``close_old_connections``, a round trip to its single database
    #: thread that every socket would pay for every chunk. A consumer adds its own.
    direct_events: frozenset[str] = frozenset({FRAMES_EVENT})

    max_frame_bytes: int = 256 * 1024

    # --- state ------------------------------------------------------------------------

    @property
    def stream_follower(self) -> Follower:
        if not hasattr(self, "_stream_follower"):
            self._stream_follower = Follower()
        return self._stream_follower

    @property
    def stream_groups(self) -> set[str]:
        """Groups this socket joined (left again by ``stream_disconnect``)."""
        if not hasattr(self, "_stream_groups"):
            self._stream_groups: set[str] = set()
        return self._stream_groups

    @property
    def streams_driven(self) -> set[str]:
        if not hasattr(self, "_streams_driven"):
            self._streams_driven: set[str] = set()
        return self._streams_driven

    def stream_follow(self, stream_id: str, after: int = -1) -> None:
        self.stream_follower.follow(stream_id, after)

    async def stream_join(self, group: str) -> None:
        if group not in self.stream_groups:
            await self.channel_layer.group_add(group, self.channel_name)  # type: ignore[attr-defined]
            self.stream_groups.add(group)

    # --- driving ---------------------------------------------------------------------------

    async def stream_claim(self, stream_id: str) -> bool:
        """Claim a pending stream for this socket, for streams created unclaimed (by a
        request that may run in another process): True for exactly one socket, ever,
        across processes; that socket tells its client it drives, then calls
        ``stream_drive`` at once. False when another socket drives it or it ended:
        this one follows it (its client resumes)."""
        return await claim_here(stream_id)

    def stream_drive(self, stream_id: str, deltas: AsyncIterator[SourceItem]) -> None:
        """Drive ``stream_id`` from this socket: the generation runs in a task of its own
        (it outlives the socket) and this socket gets every ``token`` frame."""
        self.stream_follow(stream_id)
        self.streams_driven.add(stream_id)

        async def send_token(delta: Delta) -> None:
            if not getattr(self, "_stream_closed", False):
                await self.send_json(token_frame(stream_id, delta))  # type: ignore[attr-defined]

        task = drive_in_background(stream_id, deltas, on_token=send_token)
        task.add_done_callback(lambda _: self.streams_driven.discard(stream_id))

    async def stream_disconnect(self) -> None:
        """On disconnect: stop sending tokens, leave every group joined (a layer that is
        away then is logged: the membership expires with the layer's ``group_expiry``),
        and with ``STREAMING_CANCEL_ON_DRIVER_DISCONNECT`` cancel what this socket drove."""
        self._stream_closed = True
        for group in self.stream_groups:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)  # type: ignore[attr-defined]
            except TRANSIENT_ERRORS as exc:
                logger.warning("could not leave group %s: %r", group, exc)
        if app_settings.CANCEL_ON_DRIVER_DISCONNECT:
            for stream_id in list(self.streams_driven):
                try:
                    await cancel_stream(stream_id)
                except _CANCEL_FAILURES as exc:
                    logger.warning("stream %s: cancel on disconnect failed: %r", stream_id, exc)

    # --- client frames -------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Every client frame: decoded and limited, ``resume`` and ``cancel`` served, any
        other handed to ``receive_frame``. A refused frame gets an ``error`` frame (the
        socket stays open), a flood closes it with 4008, a service briefly away answers
        ``unavailable``."""
        try:
            content = await self.decode_frame(text_data, bytes_data)
            if not await self.stream_receive_frame(content):
                await self.receive_frame(content)
        except StreamError as exc:
            await self.send_error(exc.code, exc.detail)
        except FloodError:
            await self.close(code=FLOOD_CLOSE_CODE)  # type: ignore[attr-defined]
        except TRANSIENT_ERRORS as exc:
            logger.warning("frame not handled, a service is away: %r", exc)
            await self.send_error(StreamError.UNAVAILABLE, UNAVAILABLE_DETAIL)

    async def receive_frame(self, content: dict[str, Any]) -> None:
        """A frame of the consumer's own (``content["type"]`` is a string): override it.
        Raise a StreamError to refuse one."""
        raise FrameError("unknown_type", f"Unknown frame type {content['type']!r}.")

    async def disconnect(self, code: int) -> None:
        await self.stream_disconnect()

    async def decode_frame(self, text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
        """Parse one client frame into a dict with a string ``type``, or raise FrameError
        (or FloodError past the rate limit, which holds per user across sockets and
        processes)."""
        await self._check_rate()
        raw = text_data if text_data is not None else (bytes_data or b"").decode("utf-8", "replace")
        size = len(raw.encode("utf-8"))
        if size > self.max_frame_bytes:
            self.log_refusal("frame", f"{size} bytes, over the {self.max_frame_bytes}-byte limit")
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

    async def _check_rate(self) -> None:
        """A fixed-window counter in the cache (Redis when several processes share it):
        at most FRAME_BURST frames per window of FRAME_BURST / FRAME_RATE seconds."""
        burst = app_settings.FRAME_BURST
        if not burst:
            return
        window = burst / app_settings.FRAME_RATE
        user = self.scope.get("user")  # type: ignore[attr-defined]
        who = f"user:{user.pk}" if getattr(user, "is_authenticated", False) else self.channel_name  # type: ignore[attr-defined]
        count = await count_frame(who, window)
        if count > burst:
            if count == burst + 1:
                self.log_refusal("frames", f"more than {burst} in {window:g} s; closing")
            raise FloodError

    def log_refusal(self, what: str, reason: str) -> None:
        """One INFO line per refusal, with the reason and the user id (the same form as
        ``streaming.security.OriginValidator``'s)."""
        scope = self.scope  # type: ignore[attr-defined]
        user = getattr(scope.get("user"), "pk", None) or "anonymous"
        logger.info("%s refused: %s (user %s, path %s)", what, reason, user, scope.get("path", ""))

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        return encode_frame(content)

    async def send_error(self, code: str, detail: str) -> None:
        await self.send_json({"type": "error", "code": code, "detail": detail})  # type: ignore[attr-defined]

    async def stream_receive_frame(self, content: dict[str, Any]) -> bool:
        """Serve ``resume`` and ``cancel``; False for any other type (the caller's)."""
        kind = content["type"]
        if kind == "resume":
            after = parse_after(content.get("after", -1))
            await self.stream_resume(parse_stream_id(content.get("stream_id")), after)
            return True
        if kind == "cancel":
            stream = await self._accessible_stream(parse_stream_id(content.get("stream_id")))
            await cancel_stream(stream.id)
            return True
        return False

    async def stream_can_access(self, stream: Stream) -> bool:
        return get_adapter().can_access(self.scope.get("user"), stream)  # type: ignore[attr-defined]

    async def _accessible_stream(self, stream_id: uuid.UUID) -> Stream:
        try:
            stream = await run_in_db(stream_get, stream_id=stream_id)
        except StreamError as exc:
            raise FrameError(exc.code, exc.detail) from None
        if not await self.stream_can_access(stream):
            raise FrameError(StreamError.NOT_FOUND, "No such stream.")
        return stream

    async def stream_resume(self, stream_id: uuid.UUID, after: int) -> None:
        """Join the stream's group, then send what this socket lacks after ``after``."""
        stream = await self._accessible_stream(stream_id)
        if stream.lease_expired:  # lazy reaping: its status frame reaches every follower
            await run_in_db(stream_settle_if_expired, stream_id=stream.id)
        await self.stream_join(stream.group)
        frames = await self.stream_follower.catch_up(
            str(stream.id), after, snapshot_after=app_settings.RESUME_SNAPSHOT_AFTER
        )
        for frame in frames:
            await self.send_json(frame)  # type: ignore[attr-defined]

    # --- group events ----------------------------------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] in self.direct_events:
            await getattr(self, get_handler_name(message))(message)
        else:
            await super().dispatch(message)  # type: ignore[misc]

    async def stream_frames(self, event: dict[str, Any]) -> None:
        """The frames of one announcement, each sent once, in order."""
        frames: list[Frame] = await self.stream_follower.live(event["frames"])
        for frame in frames:
            await self.send_json(frame)  # type: ignore[attr-defined]
