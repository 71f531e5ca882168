"""The flood counter (``streaming.flood``): on Redis, a burst of counts is numbered once
each, on one connection, in a window that expires; Redis away fails the counts and
they resume when it returns; other caches count through their ``incr``."""

from __future__ import annotations

import asyncio

import pytest
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from streaming import flood
from tests.servers import PrivateRedis

#: Long enough that no test's counts straddle two windows.
WINDOW = 3600.0


@pytest.fixture
def redis_cache(private_redis, settings) -> str:
    """The counting cache on the test's own Redis server; its URL."""
    url = private_redis.url()
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
    }
    settings.STREAMING_RATE_LIMIT_CACHE = "default"
    return url


async def count_many(who: str, times: int) -> list[int]:
    return list(await asyncio.gather(*(flood.count_frame(who, WINDOW) for _ in range(times))))


async def test_a_burst_of_counts_numbers_each_frame_once(redis_cache: str) -> None:
    assert sorted(await count_many("user:1", 40)) == list(range(1, 41))
    assert await flood.count_frame("user:2", WINDOW) == 1  # each user has a count of its own


async def test_a_burst_of_counts_opens_one_connection(redis_cache: str) -> None:
    async with aioredis.from_url(redis_cache) as redis:

        async def connections() -> int:
            return int((await redis.info("stats"))["total_connections_received"])

        before = await connections()
        await count_many("user:1", 100)
        assert await connections() - before == 1


async def test_a_window_expires_after_twice_its_length(redis_cache: str) -> None:
    await flood.count_frame("user:1", 10.0)
    async with aioredis.from_url(redis_cache) as redis:
        [key] = await redis.keys("*streaming:frames:user:1:*")
        assert 10 < await redis.ttl(key) <= 21


async def test_counts_fail_while_redis_is_away_and_resume_when_it_returns(
    redis_cache: str, private_redis: PrivateRedis
) -> None:
    await flood.count_frame("user:1", WINDOW)
    await asyncio.to_thread(private_redis.shutdown)
    outcomes = await asyncio.gather(
        *(flood.count_frame("user:1", WINDOW) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes)
    await asyncio.to_thread(private_redis.start)
    assert await flood.count_frame("user:1", WINDOW) == 1  # a new server: a new window


async def test_a_cancelled_count_leaves_the_others_counted(redis_cache: str) -> None:
    counts = [asyncio.ensure_future(flood.count_frame("user:1", WINDOW)) for _ in range(5)]
    await asyncio.sleep(0)  # every count waits for its batch
    counts[2].cancel()
    done = await asyncio.gather(*counts, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    others = set(done[:2] + done[3:])
    assert len(others) == 4 and others <= {1, 2, 3, 4, 5}
    assert await flood.count_frame("user:1", WINDOW) == 6  # the cancelled frame was counted


async def test_a_cache_other_than_redis_counts_through_its_incr(settings) -> None:
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "f"}
    }
    assert [await flood.count_frame("user:1", WINDOW) for _ in range(3)] == [1, 2, 3]
