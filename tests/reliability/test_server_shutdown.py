"""A daphne process is stopped (SIGTERM, as a deploy or systemd does) while it drives an
answer. The stream must not stay ``streaming`` forever, nor be lost: either the process
marks it ``error`` ("server stopped") on its way out, having saved what it had, or the
reaper settles it as ``timeout`` once its lease expires. Either way the persisted chunks
are consecutive and the final text equals them.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from streaming.driver import SERVER_STOPPED
from tests.reliability.support import (
    Page,
    account,
    assert_settled,
    drain,
    escaped_exceptions,
    persisted,
    reap_every,
    sentences,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

LEASE = 2.0


async def test_sigterm_during_an_answer_ends_the_stream_with_its_persisted_text(
    start_daphne, redis_url, test_process_layer, fake_llm, report
):
    fake_llm.reply = sentences(80)
    fake_llm.token_delay = 0.03
    env = {"redis_url": redis_url, "llm_base_url": fake_llm.base_url}
    front = start_daphne(**env, STREAMING_LEASE_SECONDS=LEASE)
    back = start_daphne(**env, STREAMING_LEASE_SECONDS=LEASE)
    ann = await account("ann")
    driver = await Page(front, ann.path, ann.cookie, idle=None).connect()
    viewer = await Page(back, ann.path, ann.cookie, idle=None).connect()
    stream_id = await driver.prompt("Tell me eighty things.")
    reading = asyncio.create_task(drain(driver))
    await viewer.until(lambda f: f["type"] == "chunk" and f["seq"] >= 2, timeout=30)

    signalled = time.monotonic()
    await asyncio.to_thread(front.stop)  # SIGTERM; kill -9 only after 15 s
    exited_after = time.monotonic() - signalled
    await asyncio.wait_for(reading, 10)
    exit_code = front.process.returncode
    db = await persisted(stream_id)
    settled_by = f"the exiting process ({db.status})" if db.status != "streaming" else None

    stop_reaper = asyncio.Event()
    reaper = asyncio.create_task(reap_every(0.25, stop_reaper))
    try:
        view = await viewer.until_final(stream_id, timeout=LEASE + 10)
    finally:
        stop_reaper.set()
        await reaper
    final_after = time.monotonic() - signalled
    db = await persisted(stream_id)
    settled_by = settled_by or f"the reaper ({db.status})"
    tokens = driver.view(stream_id).tokens

    report(
        "tried",
        f"SIGTERM to the driver's daphne after the viewer saw seq 2; viewer on a second "
        f"daphne; lease {LEASE} s, reaper every 0.25 s once the process is gone",
    )
    report(
        "measured",
        f"daphne exited after {exited_after:.2f} s with code {exit_code}; settled by "
        f"{settled_by} with error {db.error!r}; the viewer had the final status "
        f"{final_after:.2f} s after the signal; {len(db.chunks)} chunks, "
        f"{len(db.chunk_text)} chars persisted, driver got {len(tokens)} chars of tokens",
    )
    assert_settled(db, {"error", "timeout"})
    if db.status == "error":
        assert db.error == SERVER_STOPPED
        # The exit hook saves what the driver had: every token it got is persisted.
        assert db.chunk_text.startswith(tokens)
    assert fake_llm.reply.startswith(db.chunk_text)
    assert view.final["status"] == db.status
    assert view.text == db.chunk_text and view.clean
    report(
        "held",
        "not left streaming; chunks consecutive; final text = chunks = message text = "
        "the viewer's verified text"
        + ("; every token the driver got was persisted" if db.status == "error" else ""),
    )
    await viewer.close()
    escaped = escaped_exceptions(front, back)
    report("measured", f"errors logged by the servers: {escaped}")
    assert escaped == []
