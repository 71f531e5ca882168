"""A channels-redis layer that rides out a Redis outage.

With the stock layer, a Redis restart kills every consumer of the process: their
``receive`` raises, the consumer ends and daphne closes the socket, the driver's socket
included, so the driver stops getting tokens although generation goes on. And a
restarted Redis (no persistence) has forgotten every group membership.

This layer retries ``receive`` with backoff instead of raising, and after an outage
re-adds every group membership this process made. Frames broadcast during the outage are
lost (delivery is at most once anyway); seq numbers, the consumer mixin's gap repair and
the clients' ``resume`` recover them.

Its ``group_send`` takes two round trips to Redis instead of the stock four: it is sent
once a writer round for every stream that round wrote.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

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


class RedisChannelLayer(CoreRedisChannelLayer):
    """``channels_redis.core.RedisChannelLayer`` whose receive survives Redis restarts."""

    max_backoff = 1.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._memberships: defaultdict[str, set[str]] = defaultdict(set)
        self._needs_rejoin = False
        self._rejoin_lock = asyncio.Lock()

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
        """The stock ``group_send`` (channels_redis 4.3), in two round trips: the group's
        trim and members in one pipeline, then per Redis shard one script that trims
        each channel's expired messages and delivers."""
        assert self.require_valid_group_name(group), "Group name not valid"
        key = self._group_key(group)
        pipe = self.connection(self.consistent_hash(group)).pipeline(transaction=False)
        pipe.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
        pipe.zrange(key, 0, -1)
        _, members = await pipe.execute()
        channels = [member.decode("utf8") for member in members]
        by_shard, messages, capacities = self._map_channel_keys_to_connection(channels, message)
        for shard, keys in by_shard.items():
            now = time.time()
            args = [*(messages[k] for k in keys), *(capacities[k] for k in keys)]
            args += [now, self.expiry, int(now) - int(self.expiry)]
            over = await self.connection(shard).eval(_GROUP_SEND, len(keys), *keys, *args)
            if over > 0:
                logger.info(
                    "%s of %s channels over capacity in group %s", over, len(channels), group
                )

    @staticmethod
    async def _once_more_on_a_dead_connection(call: Any, *args: str) -> None:
        """After a Redis restart the pool still holds connections the server closed; the
        first command on one fails, and the pool replaces it for the second try."""
        try:
            await call(*args)
        except LAYER_ERRORS:
            await call(*args)

    async def receive(self, channel: str) -> dict:
        backoff = 0.2
        while True:
            try:
                if self._needs_rejoin:
                    await self._rejoin()
                return await super().receive(channel)
            except LAYER_ERRORS as exc:
                if not self._needs_rejoin:
                    logger.warning("channel layer lost Redis (%s); retrying", exc)
                    self._needs_rejoin = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

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
