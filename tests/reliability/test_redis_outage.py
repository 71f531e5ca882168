"""Redis (the channel layer) is restarted in the middle of an answer, losing everything it
held: group memberships and queued frames. The driver keeps its tokens (they go to its
socket directly), the database keeps its chunks, and the viewers catch up by resuming once
Redis is back, with no gap and no duplicate; no server process is restarted.

The viewers behave like the page's script (``support.Page``): reconnect and resume when
their socket closes, resume when a live stream is quiet for 2 s. The Redis restarted is a
redis-server of the test's own on a free port, so the machine's Redis (and any suite
running beside this one) is left alone.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async

from streaming.models import Chunk
from tests.reliability.support import (
    Page,
    account,
    assert_settled,
    escaped_exceptions,
    log_lines,
    log_problems,
    persisted,
    sentences,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
    pytest.mark.outage,
]

DOWN_FOR = 2.0
IDLE = 2.0


@sync_to_async
def chunks_written_between(stream_id: str, start: datetime, end: datetime) -> int:
    return Chunk.objects.filter(stream_id=stream_id, created_at__range=(start, end)).count()


async def test_a_redis_restart_mid_answer_loses_nothing_and_needs_no_server_restart(
    start_daphne, private_redis, fake_llm, report
):
    fake_llm.reply = sentences(60)
    fake_llm.token_delay = 0.04  # ~14 s of answer; Redis is down for 2 s of it
    env = {"redis_url": private_redis.url(), "llm_base_url": fake_llm.base_url}
    front = start_daphne(**env)
    back = start_daphne(**env)
    ann = await account("ann")
    driver = await Page(front, ann.path, ann.cookie, idle=IDLE).connect()
    viewers = [await Page(back, ann.path, ann.cookie, idle=IDLE).connect() for _ in range(3)]
    viewers.append(await Page(front, ann.path, ann.cookie, idle=IDLE).connect())
    pages = [driver, *viewers]

    stream_id = await driver.prompt("Tell me sixty things.")
    await viewers[0].until(lambda f: f["type"] == "chunk" and f["seq"] >= 1, timeout=30)
    following = [asyncio.create_task(page.until_final(stream_id, timeout=60)) for page in pages]
    window_start = datetime.now(UTC)
    down, up = await private_redis.arestart(DOWN_FOR)
    window_end = datetime.now(UTC)
    await asyncio.gather(*following)

    db = await persisted(stream_id)
    during = await chunks_written_between(stream_id, window_start, window_end)
    tokens_during = sum(down <= t <= up for t in driver.token_times)
    tokens_after = sum(t > up for t in driver.token_times)
    report(
        "tried",
        f"the servers' Redis (a redis-server of the test's own) shut down (nosave) and "
        f"restarted {DOWN_FOR} s later, mid-answer (~14 s "
        "of tokens); driver on daphne A, 3 viewers on daphne B and 1 on A, all acting as "
        f"the page does (reconnect + resume on close, resume after {IDLE} s of silence)",
    )
    report(
        "measured",
        f"Redis unreachable {up - down:.2f} s (wall clock {window_start:%H:%M:%S.%f} to "
        f"{window_end:%H:%M:%S.%f}); the driver got {tokens_during} tokens "
        f"meanwhile and {tokens_after} after; {during} chunks were committed meanwhile; "
        + "; ".join(
            f"{name}: {p.connects - 1} reconnects (closes {p.closes}), {p.resumes} resumes "
            f"({p.idle_resumes} after silence), "
            f"{p.view(stream_id).overlaps} overlapping chunks dropped"
            for name, p in [("driver", driver)]
            + [(f"viewer {i}", v) for i, v in enumerate(viewers)]
        ),
    )
    assert_settled(db, "done")
    assert db.chunk_text == fake_llm.reply
    assert driver.closes == [], "the driver's socket was closed by the Redis outage"
    assert driver.view(stream_id).tokens == fake_llm.reply, "the driver lost tokens"
    assert tokens_during > 0, "no token reached the driver while Redis was down"
    assert during > 0, "no chunk was committed while Redis was down"
    for page in pages:
        view = page.view(stream_id)
        assert view.text == fake_llm.reply
        assert view.clean, (view.gaps, view.duplicates, view.mismatches)
        assert view.final["status"] == "done"

    # No server restart: a new answer reaches every socket live, across both processes.
    fake_llm.reply = sentences(4)
    second = await driver.prompt("And one more thing?")
    deaf = []
    for index, viewer in enumerate(viewers):
        try:
            await viewer.until(
                lambda f: f["type"] == "message" and f["message"]["stream_id"] == second,
                timeout=10,
            )
        except TimeoutError:
            deaf.append(index)
    report(
        "measured",
        f"second answer after the restart: viewers that never heard of it: {deaf}; "
        f"'could not announce' warnings: A {len(log_lines(front, 'could not announce'))}, "
        f"B {len(log_lines(back, 'could not announce'))}; error/traceback log lines: "
        f"{len(log_problems(front, back))}",
    )
    assert deaf == [], (
        "sockets that stayed open through the Redis restart are no longer in their "
        "conversation's group: they never receive a new message frame"
    )
    for page in pages:
        await page.until_final(second, timeout=30)
    db2 = await persisted(second)
    assert_settled(db2, "done")
    for page in pages:
        assert page.view(second).text == db2.chunk_text == fake_llm.reply
    report(
        "held",
        "driver's tokens = reply with its socket open throughout; chunks kept being "
        "committed; every page's text = the database's, verified, no gap or duplicate; "
        "a second answer reached every socket live without restarting a server",
    )
    for page in pages:
        await page.close()
    await asyncio.to_thread(front.stop)
    await asyncio.to_thread(back.stop)
    escaped = escaped_exceptions(front, back)
    report("measured", f"errors logged by the servers: {escaped}")
    assert escaped == [], "an exception escaped the application after the Redis restart"
