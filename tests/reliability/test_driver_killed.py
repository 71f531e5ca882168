"""The process that drives an answer dies (kill -9) in the middle of it.

Viewers on a second daphne process keep what was committed, and the stream is settled as
``timeout`` once its lease runs out: by the reaper (here run by the test every 0.25 s, as a
scheduler would run it every minute), or by the first reader who finds the lease expired.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.reliability.support import (
    Page,
    account,
    ahttp_get,
    assert_settled,
    drain,
    escaped_exceptions,
    persisted,
    reap_every,
    sentences,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

LEASE = 2.0
REAP_EVERY = 0.25
SLACK = 1.5  # two busy cores: a process switch, a commit, a frame through Redis


async def test_a_killed_driver_leaves_its_committed_chunks_and_viewers_get_timeout_within_the_lease(
    start_daphne, redis_url, test_process_layer, fake_llm, report
):
    fake_llm.reply = sentences(80)
    fake_llm.token_delay = 0.03  # ~15 s of answer: it is far from done at the kill
    env = {"redis_url": redis_url, "llm_base_url": fake_llm.base_url}
    front = start_daphne(**env, STREAMING_LEASE_SECONDS=LEASE)
    back = start_daphne(**env, STREAMING_LEASE_SECONDS=LEASE)
    ann = await account("ann")
    driver = await Page(front, ann.path, ann.cookie, idle=None).connect()
    viewers = [await Page(back, ann.path, ann.cookie, idle=None).connect() for _ in range(3)]

    stream_id = await driver.prompt("Tell me eighty things.")
    reading = asyncio.create_task(drain(driver))
    await viewers[0].until(lambda f: f["type"] == "chunk" and f["seq"] >= 3, timeout=30)
    seen_before_kill = viewers[0].view(stream_id).text
    front.kill()
    killed = time.monotonic()
    await asyncio.wait_for(reading, 10)  # the tokens it got before its server died
    report(
        "tried",
        f"kill -9 of the driver's daphne after viewer 0 saw {len(seen_before_kill)} chars "
        f"(seq {viewers[0].view(stream_id).last_seq}); 3 viewers on the other daphne; "
        f"lease {LEASE} s, reaper every {REAP_EVERY} s",
    )

    stop_reaper = asyncio.Event()
    reaper = asyncio.create_task(reap_every(REAP_EVERY, stop_reaper))
    received: list[float] = []

    async def watch(viewer: Page) -> None:
        await viewer.until_final(stream_id, timeout=LEASE + 15)
        received.append(time.monotonic() - killed)

    try:
        await asyncio.gather(*(watch(viewer) for viewer in viewers))
    finally:
        stop_reaper.set()
        await reaper

    db = await persisted(stream_id)
    assert_settled(db, "timeout")
    assert db.chunk_text.startswith(seen_before_kill), "a chunk committed before the kill is gone"
    tokens = driver.view(stream_id).tokens
    assert fake_llm.reply.startswith(db.chunk_text)
    assert fake_llm.reply.startswith(tokens)
    for viewer in viewers:
        view = viewer.view(stream_id)
        assert view.final["status"] == "timeout" and view.final["error"]
        assert view.text == db.chunk_text
        assert view.clean, (view.gaps, view.duplicates, view.mismatches)
    assert max(received) <= LEASE + REAP_EVERY + SLACK, received

    # What the page reloads: the messages API and a resume from the start.
    answer = await ahttp_get(
        back, f"/api/conversations/{ann.conversations[0].pk}/messages/", ann.cookie
    )
    assistant = answer.json()["messages"][-1]
    assert (assistant["status"], assistant["text"]) == ("timeout", db.chunk_text)
    reloaded = await Page(back, ann.path, ann.cookie, idle=None).connect()
    await reloaded.resume(stream_id, -1)
    view = await reloaded.until_final(stream_id, timeout=10)
    assert (view.text, view.final["status"]) == (db.chunk_text, "timeout")

    report(
        "measured",
        f"persisted {len(db.chunks)} chunks ({len(db.chunk_text)} chars) of "
        f"{len(fake_llm.reply)}; driver had received {len(tokens)} chars of tokens; "
        f"the timeout status reached the viewers {min(received):.2f}-{max(received):.2f} s "
        f"after the kill (bound {LEASE + REAP_EVERY + SLACK:.2f} s)",
    )
    report(
        "held",
        "seqs 0..n consecutive; every chunk a viewer saw before the kill persisted; "
        "stream and message timeout with text = chunks; viewers' text = chunks, verified "
        "by length/sha256; messages API and a fresh resume give the same text",
    )
    for client in [*viewers, reloaded]:
        await client.close()
    assert escaped_exceptions(back) == [], "the surviving server logged an error"
