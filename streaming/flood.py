"""The per-user flood counter of client frames: a fixed window counted in a shared cache
(``STREAMING_RATE_LIMIT_CACHE``), so that reconnecting, or several sockets and processes,
do not reset it.

Every client frame is counted before it is served, so the count is on the path of every
prompt. On Django's Redis cache the counts of one event loop go out together: the counts
asked for while a round trip is out are sent as one pipeline on one connection when it
returns, as the writer batches chunks. A burst of a hundred prompts costs a few round
trips and one connection, where each count was two to four round trips on a worker
thread (Django's ``incr`` checks that the key exists first), queued with the prompts'
database work. Other caches are counted through their ``incr`` on a thread.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.redis import RedisCache
from django.core.signals import setting_changed
from django.dispatch import receiver
from redis import asyncio as aioredis

from streaming.conf import app_settings

#: Alias → the process's one instance of that cache. ``caches[alias]`` is one per asyncio
#: task (asgiref's ``Local``), so each socket's first frame opened a Redis connection pool
#: of its own, never closed: a connection per socket.
_RATE_CACHES: dict[str, BaseCache] = {}

#: Event loop → alias → that loop's counter on a Redis cache (its connection belongs to
#: the loop that opened it).
_REDIS_COUNTERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _RedisCounter]] = (
    weakref.WeakKeyDictionary()
)

#: Options of Django's Redis cache that name its synchronous classes, not connection
#: settings: the asyncio client keeps its own.
_SYNC_ONLY_OPTIONS = frozenset({"serializer", "pool_class", "parser_class"})


async def count_frame(who: str, window: float) -> int:
    """This frame's number in ``who``'s current window of ``window`` seconds."""
    alias = app_settings.RATE_LIMIT_CACHE
    cache = rate_cache(alias)
    key = f"streaming:frames:{who}:{int(time.time() // window)}"
    timeout = int(window * 2) + 1
    if isinstance(cache, RedisCache):
        return await _redis_counter(alias).count(cache.make_and_validate_key(key), timeout)
    return await sync_to_async(_count_in, thread_sensitive=False)(cache, key, timeout)


class _RedisCounter:
    """One event loop's counts on one Redis server, sent in batches: one pipeline at a
    time, holding every count asked for since the last one left."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.waiting: list[tuple[str, int, asyncio.Future[int]]] = []
        self.sender: asyncio.Task[None] | None = None  # a strong reference while it runs

    async def count(self, key: str, lifetime: int) -> int:
        counted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting.append((key, lifetime, counted))
        if self.sender is None:
            self.sender = asyncio.get_running_loop().create_task(self._send())
        return await counted

    async def _send(self) -> None:
        batch: list[tuple[str, int, asyncio.Future[int]]] = []
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                pipe = self.client.pipeline(transaction=False)
                for key, lifetime, _ in batch:
                    pipe.set(key, 0, ex=lifetime, nx=True)  # a window's first frame makes it
                    pipe.incr(key)
                try:
                    replies = await pipe.execute()
                except Exception as exc:  # every count of the batch fails as the caller's
                    for _, _, counted in batch:
                        if not counted.done():
                            counted.set_exception(exc)
                    continue
                for (_, _, counted), count in zip(batch, replies[1::2], strict=True):
                    if not counted.done():  # a caller that was cancelled meanwhile
                        counted.set_result(int(count))
        except BaseException:  # cancelled (the loop closing): no caller waits for ever
            for _, _, counted in batch + self.waiting:
                counted.cancel()
            raise
        finally:
            self.sender = None


def _count_in(cache: BaseCache, key: str, timeout: int) -> int:
    try:
        return int(cache.incr(key))
    except ValueError:  # the window's first frame
        cache.add(key, 0, timeout)
        return int(cache.incr(key))


def rate_cache(alias: str) -> BaseCache:
    """The process's one instance of the counting cache."""
    cache = _RATE_CACHES.get(alias)
    if cache is None:
        cache = _RATE_CACHES[alias] = caches.create_connection(alias)
    return cache


def _redis_counter(alias: str) -> _RedisCounter:
    """This event loop's counter on the Redis cache ``alias``: on the server that Django's
    client writes to (the first of ``LOCATION``), with the cache's connection options."""
    counters = _REDIS_COUNTERS.setdefault(asyncio.get_running_loop(), {})
    counter = counters.get(alias)
    if counter is None:
        config: dict[str, Any] = settings.CACHES[alias]
        location = config["LOCATION"]
        servers = re.split("[;,]", location) if isinstance(location, str) else location
        given: dict[str, Any] = config.get("OPTIONS") or {}
        options = {name: value for name, value in given.items() if name not in _SYNC_ONLY_OPTIONS}
        client = aioredis.Redis.from_url(servers[0], **options)
        counter = counters[alias] = _RedisCounter(client)
    return counter


@receiver(setting_changed)
def _forget_rate_caches(*, setting: str, **kwargs: Any) -> None:
    if setting == "CACHES":
        _RATE_CACHES.clear()
        _REDIS_COUNTERS.clear()
