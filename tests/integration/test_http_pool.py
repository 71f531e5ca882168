"""Concurrent HTTP requests on a small PostgreSQL pool (PostgreSQL pass only): no
request holds a connection while it waits, so neither API reads nor open event streams
starve the process's database work."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import transaction

from streaming import services
from streaming.core.lifecycle import Status
from tests.servers import session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


@sync_to_async
def user_with_streams() -> tuple[str, str, str]:
    user = get_user_model().objects.create_user("ann", password="pw")
    final = services.stream_create(group="pool.test", owner=user, claimed=True)
    with transaction.atomic():
        services.stream_end(
            stream_id=final.id, status=Status.DONE, written={}, tail=[("text", "Done.")]
        )
    live = services.stream_create(group="pool.test", owner=user, claimed=True)
    return session_cookie(user), str(final.id), str(live.id)


async def test_more_requests_than_pooled_connections_are_all_answered(postgres, start_daphne):
    server = start_daphne(redis_url=None, DATABASE_POOL="true", DATABASE_POOL_MAX_SIZE="4")
    cookie, final_id, live_id = await user_with_streams()
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, headers={"Cookie": cookie}) as session:
        # Six event streams stay open (the live stream never ends during the test)...
        streams = [
            await session.get(f"{server.http_url}/api/streams/{live_id}/events/") for _ in range(6)
        ]

        async def read() -> int:
            async with session.get(f"{server.http_url}/api/streams/{final_id}/") as response:
                await response.read()
                return response.status

        # ...and twelve reads at once on a pool of four connections are all answered.
        assert await asyncio.gather(*(read() for _ in range(12))) == [200] * 12
        assert all(response.status == 200 for response in streams)
        for response in streams:
            response.close()
