"""A channels-redis layer that rides out a Redis outage and keeps a process's own
messages out of Redis.

With the stock layer, a Redis restart kills every consumer of the process: their
``receive`` raises, the consumer ends and daphne closes the socket, the driver's socket
included, so the driver stops getting tokens although generation goes on. And a
restarted Redis (no persistence) has forgotten every group membership.

This layer receives a process's channels through one pump task per event loop, which
retries with backoff instead of raising and, after an outage, re-adds every group
membership this process made. Frames broadcast during the outage are lost (delivery is
at most once anyway); seq numbers, the consumer mixin's gap repair and the clients'
``resume`` recover them.

Because the pump, not a receiver, waits on Redis, a message for a channel of this
process is put straight into that channel's buffer: the writer's group message to the
driver's own socket costs one round trip (the group's members) instead of a delivery
script, a blocking pop and a clean-up. Members in other processes get it through Redis
as before, and ``group_send`` takes two round trips instead of the stock four;
``group_send_many`` sends many groups' messages in those two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from channels.exceptions import ChannelFull
from channels_redis.core import ChannelLock
from channels_redis.core import RedisChannelLayer as CoreRedisChannelLayer

from streaming.outages import LAYER_ERRORS

logger = logging.getLogger(__name__)

#: The stock script's delivery (each channel key below its capacity gets the message,
#: and a new expiry), preceded by the trim of its expired messages that the stock
#: ``group_send`` sends apart.
_GROUP_SEND = """
local over_capacity = 0
local current_time = ARGV[#ARGV - 2]
local expiry = ARGV[#ARGV - 1]
local expired_before = ARGV[#ARGV]
for i = 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, expired_before)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
        redis.call('ZADD', KEYS[i], current_time, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over_capacity = over_capacity + 1
    end
end
return over_capacity
"""


#: Each group's members (KEYS), after the trim of those whose membership expired.
_GROUP_MEMBERS = """
local members = {}
for i = 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, ARGV[1])
    members[i] = redis.call('ZRANGE', KEYS[i], 0, -1)
end
return members
"""


class RedisChannelLayer(CoreRedisChannelLayer):
    """``channels_redis.core.RedisChannelLayer`` whose receive survives Redis restarts,
    and which delivers within the process without Redis."""

    max_backoff = 1.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._memberships: defaultdict[str, set[str]] = defaultdict(set)
        self._needs_rejoin = False
        self._rejoin_lock = asyncio.Lock()
        #: Per process-local list ("specific.<client prefix>!"), the task that moves its
        #: messages into the channels' buffers.
        self._pumps: dict[str, asyncio.Task[None]] = {}

    # --- groups ---------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        self._memberships[group].add(channel)
        await self._once_more_on_a_dead_connection(super().group_add, group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        members = self._memberships.get(group)
        if members is not None:
            members.discard(channel)
            if not members:
                del self._memberships[group]
        await self._once_more_on_a_dead_connection(super().group_discard, group, channel)

    async def group_send(self, group: str, message: dict) -> None:
        """The stock ``group_send`` (channels_redis 4.3) in two round trips instead of
        four, and none for the members pumped here: see ``group_send_many``."""
        await self.group_send_many([(group, message)])

    async def group_send_many(self, sends: Sequence[tuple[str, dict]]) -> None:
        """Each ``(group, message)`` sent as ``group_send`` would, all at once (a writer
        round's announcements): the groups' trims and members in one script per Redis
        shard; members pumped here get their messages in their buffers, the others
        through one script per shard for every message, which trims each channel's
        expired messages and delivers. Two round trips however many groups, where one
        ``group_send`` each would take two apiece and a pooled connection each.

        Messages of one call to one channel of another process may arrive in any order
        (they share a score, as the stock layer's sends in one instant do), so give each
        group one message a call."""
        for group, _ in sends:
            assert self.require_valid_group_name(group), "Group name not valid"
        scripts: defaultdict[int, list[tuple[str, bytes, int]]] = defaultdict(list)
        over = 0
        for (_, message), channels in zip(sends, await self._members(sends), strict=True):
            here: list[str] = []
            there: list[str] = []
            for channel in channels:
                (here if self._pumped_here(channel) else there).append(channel)
            over += self._deliver_here(here, message) if here else 0
            by_shard, messages, capacities = self._map_channel_keys_to_connection(there, message)
            for shard, keys in by_shard.items():
                scripts[shard] += [(key, messages[key], capacities[key]) for key in keys]
        for shard, deliveries in scripts.items():
            keys, messages, capacities = zip(*deliveries, strict=True)
            now = time.time()
            args = [*messages, *capacities, now, self.expiry, int(now) - int(self.expiry)]
            over += await self.connection(shard).eval(_GROUP_SEND, len(keys), *keys, *args)
        if over > 0:
            groups = ", ".join(group for group, _ in sends[:5])
            logger.info("%s channels over capacity in group(s) %s", over, groups)

    async def _members(self, sends: Sequence[tuple[str, dict]]) -> list[list[str]]:
        """Each send's group members, after the trim of the expired ones: one script per
        shard holding the groups (a pipeline of two commands a group cost a round of 250
        streams 6 % of its process's CPU in packing and parsing them)."""
        by_shard: defaultdict[int, list[int]] = defaultdict(list)
        for index, (group, _) in enumerate(sends):
            by_shard[self.consistent_hash(group)].append(index)
        members: list[list[str]] = [[] for _ in sends]
        expired_before = int(time.time()) - self.group_expiry
        for shard, indexes in by_shard.items():
            keys = [self._group_key(sends[index][0]) for index in indexes]
            replies = await self.connection(shard).eval(
                _GROUP_MEMBERS, len(keys), *keys, expired_before
            )
            for index, found in zip(indexes, replies, strict=True):
                members[index] = [member.decode("utf8") for member in found]
        return members

    @staticmethod
    async def _once_more_on_a_dead_connection(call: Any, *args: str) -> None:
        """After a Redis restart the pool still holds connections the server closed; the
        first command on one fails, and the pool replaces it for the second try."""
        try:
            await call(*args)
        except LAYER_ERRORS:
            await call(*args)

    # --- sending within the process --------------------------------------------------------

    async def send(self, channel: str, message: dict) -> None:
        """The stock ``send``, but straight into the buffer of a channel pumped here, so a
        process's sends and group messages to one of its channels keep their order."""
        if not self._pumped_here(channel):
            await super().send(channel, message)
            return
        assert isinstance(message, dict), "message is not a dict"
        assert "__asgi_channel__" not in message
        if self._deliver_here([channel], message):
            raise ChannelFull()

    def _pumped_here(self, channel: str) -> bool:
        """Whether a pump of the running event loop receives ``channel``'s messages."""
        if "!" not in channel:
            return False
        pump = self._pumps.get(self.non_local_name(channel))
        if pump is None or pump.done():
            return False
        return pump.get_loop() is asyncio.get_running_loop()

    def _deliver_here(self, channels: list[str], message: dict) -> int:
        """Put a copy of ``message`` (as Redis would return it) into each channel's
        buffer, but not over the channel's capacity; how many were over it."""
        copy = self.deserialize(self.serialize(message))
        over = 0
        for channel in channels:
            buffer = self.receive_buffer[channel]
            if buffer.qsize() >= self.get_capacity(channel):
                over += 1
            else:
                buffer.put_nowait(copy)
        return over

    # --- receiving ---------------------------------------------------------------------------

    async def receive(self, channel: str) -> dict:
        """The next message of ``channel``. A process-local channel waits on its buffer,
        which the loop's pump fills; cancelling the wait loses nothing of other channels."""
        if "!" not in channel:
            return await self._once_redis_answers(super().receive, channel)
        assert self.require_valid_channel_name(channel)
        real_channel = self.non_local_name(channel)
        assert real_channel.endswith(self.client_prefix + "!"), "Wrong client prefix"
        self._start_pump(real_channel)
        buffer = self.receive_buffer[channel]
        try:
            return await buffer.get()
        except asyncio.CancelledError:
            # Its consumer ends: drop what it would have read, as the stock layer does.
            if self.receive_buffer.get(channel) is buffer:
                del self.receive_buffer[channel]
            raise

    async def _once_redis_answers(self, call: Any, *args: str) -> Any:
        """``call(*args)``, retried with backoff while Redis is away; after an outage the
        process's memberships are re-added first."""
        backoff = 0.2
        while True:
            try:
                if self._needs_rejoin:
                    await self._rejoin()
                return await call(*args)
            except LAYER_ERRORS as exc:
                if not self._needs_rejoin:
                    logger.warning("channel layer lost Redis (%s); retrying", exc)
                    self._needs_rejoin = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _start_pump(self, real_channel: str) -> None:
        loop = asyncio.get_running_loop()
        pump = self._pumps.get(real_channel)
        if pump is not None and pump.get_loop() is not loop:
            if pump.get_loop().is_running() and not pump.done():
                raise RuntimeError(
                    "Two event loops are trying to receive() on one channel layer at once!"
                )
            # The old loop's receivers are gone, and so is the use of its locks (a pump
            # stopped while it waited holds one for good).
            for channel in [c for c in self.receive_buffer if c.startswith(real_channel)]:
                del self.receive_buffer[channel]
            self.receive_clean_locks = ChannelLock()
        elif pump is not None and not pump.done():
            return
        self._pumps[real_channel] = loop.create_task(
            self._pump(real_channel), name=f"channel-layer-pump {real_channel}"
        )

    async def _pump(self, real_channel: str) -> None:
        """Move every message of this process's list into its channels' buffers, for as
        long as the loop runs, through any Redis outage."""
        while True:
            try:
                target, message = await self._once_redis_answers(self.receive_single, real_channel)
            except Exception:  # a message it cannot read must not stop the process's sockets
                logger.exception("channel layer: could not receive; retrying")
                await asyncio.sleep(self.max_backoff)
                continue
            for channel in target if isinstance(target, list) else [target]:
                self.receive_buffer[channel].put_nowait(message)

    async def _rejoin(self) -> None:
        """Re-add this process's memberships once Redis answers again (raises while not)."""
        async with self._rejoin_lock:
            if not self._needs_rejoin:
                return
            memberships = [(g, c) for g, channels in self._memberships.items() for c in channels]
            for group, channel in memberships:
                await super().group_add(group, channel)
            self._needs_rejoin = False
            logger.warning("Redis is back; re-added %d group memberships", len(memberships))

    async def close_pools(self) -> None:
        """Stop this loop's pumps (a later receive starts them again), then close the
        connections."""
        loop = asyncio.get_running_loop()
        mine = [p for p in self._pumps.values() if p.get_loop() is loop and not p.done()]
        self._pumps = {c: p for c, p in self._pumps.items() if p not in mine}
        for pump in mine:
            pump.cancel()
        for pump in mine:
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        await super().close_pools()
