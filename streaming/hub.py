"""The process hub: one channel-layer channel per process (per event loop) that receives
for everything in the process that is not a websocket consumer.

Two jobs share it:

* **Cancels.** Every hub is in the drivers group; ``cancel_stream`` broadcasts there, and
  the hub whose process drives the stream stops it and acknowledges. So a stream needs
  no channel of its own, and a claim can be written before its driver starts.
* **Followers without a socket** (Server-Sent Events, AI SDK streams). A subscription
  joins the stream's group once per process, however many readers follow it, and the
  hub hands each group event to the subscriptions of its stream.

One receive loop per process, never cancelled while the process runs: cancelling a
pending channels-redis ``receive`` can lose a message meant for another consumer of the
same process. A reader that leaves only drops its subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

from channels.layers import get_channel_layer

from streaming.frames import FRAMES_EVENT, Frame
from streaming.metrics import FRAMES_DROPPED

logger = logging.getLogger(__name__)

DRIVERS_GROUP = "streaming.drivers"
CANCEL_EVENT = "stream.cancel"
CANCEL_ACK_EVENT = "stream.cancel_ack"
#: Group events a subscription may hold before it is marked lagged (its reader then
#: catches up from the database): bounded memory per reader, whatever its speed.
SUBSCRIPTION_BUFFER = 256
_MAX_BACKOFF = 2.0
#: Group memberships expire in the channel layer (``group_expiry``); the hub renews its
#: own well before.
_RENEW_FRACTION = 0.25


class Subscription:
    """One reader's view of one stream's group events, in order, bounded."""

    def __init__(self, stream_id: str, maxsize: int = SUBSCRIPTION_BUFFER) -> None:
        self.stream_id = stream_id
        self._events: asyncio.Queue[list[Frame]] = asyncio.Queue(maxsize)
        self.lagged = False

    def push(self, frames: list[Frame]) -> None:
        """Queue frames for the reader (the hub's group events, or a driver's tokens)."""
        try:
            self._events.put_nowait(frames)
        except asyncio.QueueFull:
            self.lagged = True
            FRAMES_DROPPED.labels("slow_reader").inc(len(frames))

    async def get(self, wait: float) -> list[Frame] | None:
        """The next group event's frames, or None after ``wait`` seconds of silence.
        A lagged subscription answers ``[]`` once, so its reader repairs from the
        database: frames were dropped, and a gap may not show (a lost final status)."""
        if self.lagged:
            self.lagged = False
            return []
        try:
            return await asyncio.wait_for(self._events.get(), wait)
        except TimeoutError:
            return None


class Hub:
    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel = ""
        self._drivers: dict[str, Callable[[], None]] = {}
        self._subscriptions: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._group_readers: defaultdict[str, int] = defaultdict(int)
        self._membership = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        # The layer's default prefix: channels-redis reads every process-local channel
        # through one shared receive, on the list of whichever receiver holds its lock;
        # a prefix of our own would be a second list, and while the hub held the lock
        # the process's websocket consumers would receive nothing.
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(DRIVERS_GROUP, self.channel)
        self._tasks = [
            asyncio.create_task(self._receive_loop(), name="streaming-hub"),
            asyncio.create_task(self._renew_loop(), name="streaming-hub-renew"),
        ]

    async def stop(self) -> None:
        """Stop receiving and leave every group (a process shutting down; tests)."""
        for task in self._tasks:
            task.cancel()
        for group in [DRIVERS_GROUP, *self._group_readers]:
            try:
                await self.layer.group_discard(group, self.channel)
            except Exception as exc:
                logger.warning("hub could not leave group %s: %r", group, exc)

    # --- drivers ------------------------------------------------------------------------

    def register_driver(self, stream_id: str, on_cancel: Callable[[], None]) -> None:
        self._drivers[stream_id] = on_cancel

    def unregister_driver(self, stream_id: str) -> None:
        self._drivers.pop(stream_id, None)

    async def request_cancel(self, stream_id: str, *, ack_within: float) -> bool:
        """Ask the stream's driver to stop, wherever it runs; whether it acknowledged
        within ``ack_within`` seconds (False: no driver is alive to do it)."""
        local = self._drivers.get(stream_id)
        if local is not None:
            local()
            return True
        # A channel of its own, not process-local: awaiting it can be cancelled safely.
        reply_to = f"streaming.ack.{uuid.uuid4().hex}"
        await send_cancel(stream_id, reply_to=reply_to)
        try:
            async with asyncio.timeout(ack_within):
                while (await self.layer.receive(reply_to)).get("type") != CANCEL_ACK_EVENT:
                    pass
        except TimeoutError:
            return False
        return True

    # --- followers ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribe(
        self, group: str, stream_id: str, *, maxsize: int = SUBSCRIPTION_BUFFER
    ) -> AsyncIterator[Subscription]:
        """Follow one stream's group events. The group is joined before this yields, so
        a read of the database made afterwards misses nothing announced later."""
        subscription = Subscription(stream_id, maxsize)
        async with self._membership:
            if not self._group_readers[group]:
                await self.layer.group_add(group, self.channel)
            self._group_readers[group] += 1
        self._subscriptions[stream_id].add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscriptions[stream_id]
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscriptions[stream_id]
            await asyncio.shield(self._leave(group))

    async def _leave(self, group: str) -> None:
        async with self._membership:
            self._group_readers[group] -= 1
            if self._group_readers[group]:
                return
            del self._group_readers[group]
            try:
                await self.layer.group_discard(group, self.channel)
            except Exception as exc:  # the membership expires with the layer's group_expiry
                logger.warning("hub could not leave group %s: %r", group, exc)

    # --- receiving ----------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("hub: receive failed; retrying", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = 0.1
            try:
                await self._dispatch(message)
            except Exception:
                logger.exception("hub: could not handle a %s message", message.get("type"))

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == FRAMES_EVENT:
            frames: list[Frame] = message["frames"]
            for subscription in self._subscriptions.get(frames[0]["stream_id"], ()):
                subscription.push(frames)
        elif kind == CANCEL_EVENT:
            on_cancel = self._drivers.get(message["stream_id"])
            if on_cancel is None:
                return
            on_cancel()
            if message.get("reply_to"):
                await self.layer.send(message["reply_to"], {"type": CANCEL_ACK_EVENT})

    async def _renew_loop(self) -> None:
        """Join again every group this hub is in, well within the layer's expiry."""
        every = max(60.0, float(getattr(self.layer, "group_expiry", 86400)) * _RENEW_FRACTION)
        while True:
            await asyncio.sleep(every)
            for group in [DRIVERS_GROUP, *self._group_readers]:
                try:
                    await self.layer.group_add(group, self.channel)
                except Exception as exc:
                    logger.warning("hub could not renew group %s: %r", group, exc)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()
_starting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[Hub]] = (
    weakref.WeakKeyDictionary()
)


async def get_hub() -> Hub:
    """This event loop's hub, started on first use (a server process has one loop)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is not None:
        return hub
    starting = _starting.get(loop)
    if starting is None:
        starting = _starting[loop] = loop.create_task(_start_hub())
    try:
        return await asyncio.shield(starting)
    except Exception:
        if _starting.get(loop) is starting:
            del _starting[loop]  # the next caller tries again (the layer was away)
        raise


async def _start_hub() -> Hub:
    hub = Hub(get_channel_layer())
    await hub.start()
    _hubs[asyncio.get_running_loop()] = hub
    return hub


async def send_cancel(stream_id: str, *, reply_to: str = "") -> None:
    """Tell the drivers of every process to stop ``stream_id`` (the one that has it does)."""
    message = {"type": CANCEL_EVENT, "stream_id": stream_id, "reply_to": reply_to}
    await get_channel_layer().group_send(DRIVERS_GROUP, message)
