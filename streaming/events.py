"""A stream as an async iterator of frames, for transports that are not websocket
consumers: the Server-Sent Events view, an HTTP prompt's response, the AI SDK routes.

``follow_frames`` is a reader: catch up from the database, then live through the
process hub, exactly once (the shared ``Follower``). ``drive_frames`` is an HTTP
response that drives a stream: the driver's tokens, then the same frames as a reader.
Both yield ``None`` after each silence of ``STREAMING_SSE_KEEPALIVE_SECONDS`` (the
transport sends a keep-alive) and end after the final status, or after
``STREAMING_SSE_MAX_SECONDS`` so that no proxy holds a response for ever.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from streaming.conf import app_settings
from streaming.core.deltas import Delta
from streaming.driver import SourceItem, drive_in_background
from streaming.follow import Follower
from streaming.frames import Frame, token_frame
from streaming.hub import SUBSCRIPTION_BUFFER, Subscription, get_hub

#: Tokens an HTTP driver may have unsent before it loses them (it still gets the chunks).
DRIVER_BUFFER = 10_000


class TokenFeed:
    """A driver's tokens for an HTTP response that starts a moment after the drive (or,
    if its client left at once, never): held until the response reads them, then handed
    to it as they come; nothing once the response is gone."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.held: deque[Frame] = deque()
        self.sink: Subscription | None = None
        self.closed = False

    async def __call__(self, delta: Delta) -> None:
        if self.closed:
            return
        frame = token_frame(self.stream_id, delta)
        if self.sink is not None:
            self.sink.push([frame])
        elif len(self.held) < DRIVER_BUFFER:
            self.held.append(frame)

    def attach(self, subscription: Subscription) -> list[Frame]:
        """From now on, tokens go to ``subscription``; returns the ones held so far."""
        held, self.held = list(self.held), deque()
        self.sink = subscription
        return held

    def close(self) -> None:
        self.closed, self.sink = True, None
        self.held.clear()


async def follow_frames(
    stream_id: str,
    group: str,
    *,
    after: int,
    before: Sequence[Frame] = (),
    feed: TokenFeed | None = None,
    snapshots: bool = True,
) -> AsyncIterator[Frame | None]:
    """``before`` (say, the messages that announce the stream), then the stream's frames
    after ``after``: what is persisted, then live, none missing and none twice; ``None``
    after each silence. With ``feed``, the driver's tokens too. ``snapshots=False``:
    chunks whenever they are kept, a snapshot only for purged ones (``Follower``)."""
    for frame in before:
        yield frame
    hub = await get_hub()
    follower = Follower(snapshots=snapshots)
    deadline = time.monotonic() + app_settings.SSE_MAX_SECONDS
    maxsize = DRIVER_BUFFER if feed is not None else SUBSCRIPTION_BUFFER
    async with hub.subscribe(group, stream_id, maxsize=maxsize) as subscription:
        if feed is not None:
            for frame in feed.attach(subscription):
                yield frame
        try:
            for frame in await follower.catch_up(
                stream_id, after, snapshot_after=app_settings.RESUME_SNAPSHOT_AFTER
            ):
                yield frame
            while follower.follows(stream_id):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                frames = await subscription.get(min(app_settings.SSE_KEEPALIVE_SECONDS, remaining))
                if frames is None:
                    yield None
                    # Silence may hide a lost final status: the database knows.
                    frames = []
                out = await follower.live(frames) if frames else await follower.repair(stream_id)
                for frame in out or []:
                    yield frame
        finally:
            if feed is not None:
                feed.close()


def drive_frames(
    stream_id: str,
    group: str,
    deltas: AsyncIterator[SourceItem],
    *,
    before: Sequence[Frame] = (),
) -> AsyncIterator[Frame | None]:
    """Start driving ``stream_id`` now, in a task of its own (it outlives the response),
    and return the frames its HTTP response sends: ``before`` (the messages it answers),
    then the driver's tokens, chunks and statuses until the final status."""
    feed = TokenFeed(stream_id)
    drive_in_background(stream_id, deltas, on_token=feed)
    return follow_frames(stream_id, group, after=-1, before=before, feed=feed)
