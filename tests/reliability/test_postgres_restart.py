"""PostgreSQL restarts under two daphne processes with their connection pools warm
(PostgreSQL pass only). While it is away, reads answer a JSON 503, never a 500; once it
is back, every process answers its very next requests, over HTTP and websockets: the
pool checks a connection before handing it out, instead of handing out the dead ones.
"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction

from streaming import services
from streaming.core.lifecycle import Status
from tests.reliability.support import Page, account, ahttp_get, escaped_exceptions

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(150),
    pytest.mark.outage,
]


@sync_to_async
def finished_stream(owner) -> str:
    stream = services.stream_create(group="restart.test", owner=owner, claimed=True)
    with transaction.atomic():
        services.stream_end(
            stream_id=stream.id, status=Status.DONE, written={}, tail=[("text", "Still here.")]
        )
    return str(stream.id)


async def test_after_a_postgres_restart_both_processes_answer_their_next_requests(
    start_daphne, redis_url, postgres_outage, report
):
    servers = [start_daphne(redis_url=redis_url, DATABASE_POOL="true") for _ in range(2)]
    ann = await account("ann")
    stream_id = await finished_stream(ann.user)
    path = f"/api/streams/{stream_id}/"

    async def read_all(server, times: int) -> list[int]:
        answers = await asyncio.gather(*(ahttp_get(server, path, ann.cookie) for _ in range(times)))
        return [answer.status for answer in answers]

    for server in servers:  # several pooled connections in each process
        assert await read_all(server, 8) == [200] * 8

    await postgres_outage.stop()
    try:
        away = [await ahttp_get(server, path, ann.cookie) for server in servers]
    finally:
        await postgres_outage.start()
    after = {server.port: [await read_all(server, 1) for _ in range(10)] for server in servers}
    report("measured", f"while away {[a.status for a in away]}; after {after}")

    for answer in away:
        assert answer.status == 503
        assert answer.json()["error"]["code"] == "unavailable"
    assert all(statuses == [[200]] * 10 for statuses in after.values()), after
    for server in servers:
        page = await Page(server, ann.path, ann.cookie, idle=None).connect()
        await page.send({"type": "resume", "stream_id": stream_id, "after": -1})
        final = await page.until_final(stream_id, timeout=10)
        assert final.text == "Still here."
        assert not [f for f in page.frames if f["type"] == "error"]
        await page.close()
    assert not escaped_exceptions(*servers)
