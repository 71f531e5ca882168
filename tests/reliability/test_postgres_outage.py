"""PostgreSQL goes away for a few seconds in the middle of an answer (PostgreSQL pass only).

The driver's tokens do not wait for the database; chunk writes retry with backoff for
``STREAMING_DB_RETRY_SECONDS``. Within that bound nothing is lost: the persisted text is
what was generated. Beyond it the stream ends as ``error`` with what was persisted, and
the driver hears so once the database is back.

These stop the machine's PostgreSQL cluster (``pg_ctlcluster … stop -m fast``) for about
3 to 4 seconds: a suite running beside them on the same cluster sees errors meanwhile.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.reliability.support import (
    Page,
    account,
    assert_settled,
    escaped_exceptions,
    log_lines,
    persisted,
    sentences,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(150),
    pytest.mark.outage,
]


async def _answer_under_way(start_daphne, redis_url, fake_llm, **env):
    fake_llm.reply = sentences(50)
    fake_llm.token_delay = 0.04  # ~12 s of answer
    servers = {"redis_url": redis_url, "llm_base_url": fake_llm.base_url, **env}
    front, back = start_daphne(**servers), start_daphne(**servers)
    ann = await account("ann")
    driver = await Page(front, ann.path, ann.cookie, idle=2.0).connect()
    viewer = await Page(back, ann.path, ann.cookie, idle=2.0).connect()
    stream_id = await driver.prompt("Tell me fifty things.")
    await viewer.until(lambda f: f["type"] == "chunk" and f["seq"] >= 1, timeout=30)
    return front, back, driver, viewer, stream_id


async def _outage(postgres_outage, seconds: float, stream_id: str, *pages: Page):
    """Stop PostgreSQL for ``seconds`` while ``pages`` follow the stream to its end.
    Returns when the outage began and ended, and the tasks following the stream."""
    following = [asyncio.create_task(p.until_final(stream_id, timeout=60)) for p in pages]
    try:
        down = await postgres_outage.stop()
        await asyncio.sleep(seconds)
    finally:
        up = await postgres_outage.start()
    return down, up, following


async def test_a_short_postgres_outage_is_retried_and_the_persisted_text_is_whole(
    start_daphne, redis_url, postgres_outage, fake_llm, report
):
    front, back, driver, viewer, stream_id = await _answer_under_way(
        start_daphne, redis_url, fake_llm, STREAMING_DB_RETRY_SECONDS=20
    )
    down, up, following = await _outage(postgres_outage, 1.5, stream_id, driver, viewer)
    await asyncio.gather(*following)

    db = await persisted(stream_id)
    tokens = driver.view(stream_id)
    during = sum(down <= t <= up for t in driver.token_times)
    retries = len(log_lines(front, "the write round is retried"))
    report(
        "tried",
        "PostgreSQL stopped (fast) mid-answer, started again 1.5 s later; "
        "STREAMING_DB_RETRY_SECONDS=20; driver on daphne A, viewer on daphne B",
    )
    report(
        "measured",
        f"database unreachable {up - down:.2f} s (from the stop's return to accepting "
        f"connections again); the driver got {during} tokens meanwhile; "
        f"{retries} chunk-write retries logged; {len(db.chunks)} chunks, status {db.status}",
    )
    assert during > 0, "no token reached the driver while PostgreSQL was down"
    assert retries > 0, "no chunk write was attempted during the outage"
    assert_settled(db, "done")
    assert db.chunk_text == fake_llm.reply == tokens.tokens
    for page in (driver, viewer):
        view = page.view(stream_id)
        assert view.text == db.chunk_text and view.clean
    escaped = escaped_exceptions(front, back)
    report(
        "held",
        "tokens kept flowing; after the outage the persisted text = the generated text = "
        f"the driver's tokens = each page's verified text; errors logged: {escaped}",
    )
    assert escaped == []
    for page in (driver, viewer):
        await page.close()


async def test_a_postgres_outage_beyond_the_retry_bound_ends_as_error_and_the_driver_is_told(
    start_daphne, redis_url, postgres_outage, fake_llm, report
):
    bound = 1.0
    front, back, driver, viewer, stream_id = await _answer_under_way(
        start_daphne, redis_url, fake_llm, STREAMING_DB_RETRY_SECONDS=bound
    )
    seen_before = viewer.view(stream_id).text
    down, up, following = await _outage(postgres_outage, 4.0, stream_id, driver, viewer)
    told_at: list[float] = []
    for task in following:
        await task
        told_at.append(time.monotonic() - up)

    db = await persisted(stream_id)
    tokens = driver.view(stream_id).tokens
    report(
        "tried",
        f"PostgreSQL stopped (fast) mid-answer, started again 4 s later; "
        f"STREAMING_DB_RETRY_SECONDS={bound}",
    )
    report(
        "measured",
        f"database unreachable {up - down:.2f} s (from the stop's return to accepting "
        f"connections again); final status {db.status} ({db.error!r}); "
        f"{len(db.chunks)} chunks ({len(db.chunk_text)} chars) kept, the driver had got "
        f"{len(tokens)} chars of tokens; driver and viewer told "
        f"{told_at[0]:.2f} s and {told_at[1]:.2f} s after the database was back",
    )
    assert db.status != "timeout", (
        "the driver gave up recording the final status while the database was still down; "
        "the stream stayed streaming until its lease expired and a reader settled it timeout"
    )
    assert_settled(db, "error")
    assert db.error
    assert db.chunk_text.startswith(seen_before)
    assert tokens.startswith(db.chunk_text)
    assert fake_llm.reply.startswith(tokens)
    for page in (driver, viewer):
        view = page.view(stream_id)
        assert view.final["status"] == "error" and view.final["error"] == db.error
        assert view.text == db.chunk_text and view.clean

    # The database is back: the same socket can ask again.
    fake_llm.reply = sentences(3)
    again = await driver.prompt("Once more?")
    view = await driver.until_final(again, timeout=30)
    assert view.final["status"] == "done" and view.text == fake_llm.reply
    report(
        "held",
        "ended error (not left streaming, not timeout) with the text persisted before the "
        "outage; driver and viewer got the final status, verified; the next prompt on the "
        "same socket was done",
    )
    for page in (driver, viewer):
        await page.close()
    escaped = [
        line for line in escaped_exceptions(front, back) if "chunk writes failed" not in line
    ]
    report("measured", f"errors logged besides the expected 'chunk writes failed': {escaped}")
    assert escaped == []
