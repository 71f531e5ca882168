"""Load: 500 sockets over two daphne processes sharing Redis, for a minute.

50 users, one conversation each, 10 sockets per conversation: one driver and nine viewers,
spread over both processes. Each driver asks, waits for its answer (a few seconds of fake
LLM tokens) and asks again until the minute is over. Every answer must complete, every
socket's text must equal the database's, the servers must log no error, and their resident
memory must come back to within 10% of what it was after a warm-up round once the sockets
are gone.

Scale with RELIABILITY_LOAD_USERS, RELIABILITY_LOAD_SOCKETS (per user) and
RELIABILITY_LOAD_SECONDS.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import resource
import time
from dataclasses import dataclass, field

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from streaming.models import Stream
from tests.reliability.support import (
    Account,
    Page,
    account,
    established_connections,
    log_problems,
    rss_kib,
    sentences,
    wait_for,
)

USERS = int(os.environ.get("RELIABILITY_LOAD_USERS", "50"))
SOCKETS = int(os.environ.get("RELIABILITY_LOAD_SOCKETS", "10"))
SECONDS = float(os.environ.get("RELIABILITY_LOAD_SECONDS", "60"))
WARMUP_SECONDS = float(os.environ.get("RELIABILITY_LOAD_WARMUP_SECONDS", "10"))
TOKEN_DELAY = 0.1
REPLY = sentences(5)  # 30 tokens: ~3 s an answer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.timeout(int(SECONDS) + 400),
]


@dataclass
class Room:
    """One conversation: its driver, its viewers and the answers asked for."""

    owner: Account
    driver: Page
    viewers: list[Page]
    streams: list[str] = field(default_factory=list)
    done_asking: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pages(self) -> list[Page]:
        return [self.driver, *self.viewers]


def raise_open_files_limit(wanted: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def open_rooms(servers, owners: list[Account]) -> list[Room]:
    """Connect every socket (50 handshakes at a time); each room spans both servers."""
    gate = asyncio.Semaphore(50)

    async def connect(server, owner: Account, idle: float | None) -> Page:
        async with gate:
            return await Page(server, owner.path, owner.cookie, idle=idle).connect(retry_for=30)

    rooms = []
    for index, owner in enumerate(owners):
        driver = connect(servers[index % 2], owner, None)
        viewers = [connect(servers[(index + j + 1) % 2], owner, 5.0) for j in range(SOCKETS - 1)]
        pages = await asyncio.gather(driver, *viewers)
        rooms.append(Room(owner, pages[0], list(pages[1:])))
    return rooms


async def drive(room: Room, until: float) -> None:
    """Ask, wait for the answer, ask again, until the time is up (at least once)."""
    try:
        while True:
            stream_id = await room.driver.prompt(f"Question {len(room.streams)}?")
            room.streams.append(stream_id)
            await room.driver.until_final(stream_id, timeout=120)
            if time.monotonic() >= until:
                return
    finally:
        room.done_asking.set()


async def watch(room: Room, viewer: Page, deadline: float) -> None:
    """Read frames as the page does until every answer of the room is final here."""
    while time.monotonic() < deadline:
        if room.done_asking.is_set() and all(
            viewer.view(s).final is not None for s in room.streams
        ):
            return
        await viewer.step()


async def run_round(rooms: list[Room], seconds: float) -> float:
    started = time.monotonic()
    until = started + seconds
    deadline = until + 180
    tasks = [drive(room, until) for room in rooms]
    tasks += [watch(room, viewer, deadline) for room in rooms for viewer in room.viewers]
    await asyncio.gather(*tasks)
    return time.monotonic() - started


async def close_rooms(rooms: list[Room]) -> None:
    await asyncio.gather(*(page.close() for room in rooms for page in room.pages))


async def sample_rss(servers, samples: list[list[int]], every: float = 5.0) -> None:
    while True:
        await asyncio.sleep(every)
        samples.append([rss_kib(s) // 1024 for s in servers])


def growth(before: list[int], after: list[int]) -> list[str]:
    return [f"{a / b - 1:+.1%}" for b, a in zip(before, after, strict=True)]


@sync_to_async
def stored(stream_ids: list[str]) -> dict[str, tuple[str, str]]:
    return {
        str(pk): (status, text)
        for pk, status, text in Stream.objects.filter(id__in=stream_ids).values_list(
            "id", "status", "text"
        )
    }


def check_rooms(rooms: list[Room], db: dict[str, tuple[str, str]]) -> list[str]:
    """Every answer done with the whole reply; every socket of its room holds the same
    verified text, having seen no gap or duplicate; the driver got it all as tokens."""
    problems = []
    for room in rooms:
        for stream_id in room.streams:
            status, text = db.get(stream_id, ("missing", ""))
            if (status, text) != ("done", REPLY):
                problems.append(f"{stream_id}: {status}, {len(text)} chars")
            if room.driver.view(stream_id).tokens != text:
                problems.append(f"{stream_id}: the driver's tokens differ")
            for index, page in enumerate(room.pages):
                view = page.views.get(stream_id)
                if view is None or view.final is None:
                    problems.append(f"{stream_id}: socket {index} never got its final status")
                elif view.text != text or not view.clean:
                    problems.append(
                        f"{stream_id}: socket {index} holds {len(view.text)} chars, gaps "
                        f"{view.gaps}, duplicates {view.duplicates}"
                    )
            for index, page in enumerate(room.pages):
                foreign = set(page.views) - set(room.streams)
                if foreign:
                    problems.append(
                        f"socket {index} of {room.owner.user} saw streams not of this round "
                        f"in its room: {sorted(foreign)[:3]}, frames "
                        f"{[f for f in page.frames if f.get('stream_id') in foreign][:3]}"
                    )
    return problems


async def test_500_sockets_on_two_processes_get_every_answer_whole_and_memory_returns(
    start_daphne, redis_url, fake_llm, report
):
    limits = raise_open_files_limit(4 * USERS * SOCKETS + 1024)
    fake_llm.reply = REPLY
    fake_llm.token_delay = TOKEN_DELAY
    # As in production: DEBUG keeps every query of a connection (up to 9,000 each),
    # which grows memory that no leak explains.
    env = {"redis_url": redis_url, "llm_base_url": fake_llm.base_url}
    production = {"DEBUG": "false", "SECRET_KEY": settings.SECRET_KEY}  # the test's sessions
    servers = [start_daphne(**env, **production) for _ in range(2)]
    owners = [await account(f"load{i}") for i in range(USERS)]

    # Warm-up: one answer per room, then every socket closed; memory measured after.
    rooms = await open_rooms(servers, owners)
    warm = await run_round(rooms, WARMUP_SECONDS)
    await close_rooms(rooms)
    warm_problems = check_rooms(rooms, await stored([s for r in rooms for s in r.streams]))
    del rooms
    gc.collect()
    # The baseline once both servers have let go of every warm-up socket.
    assert await wait_for(
        lambda: not any(established_connections(s.port) for s in servers), timeout=30
    )
    start_rss = [rss_kib(s) for s in servers]

    rooms = await open_rooms(servers, owners)
    connected_rss = [rss_kib(s) for s in servers]
    samples: list[list[int]] = []
    sampler = asyncio.create_task(sample_rss(servers, samples))
    took = await run_round(rooms, SECONDS)
    sampler.cancel()
    peak_rss = [rss_kib(s) for s in servers]
    await close_rooms(rooms)
    answers = [s for room in rooms for s in room.streams]
    problems = check_rooms(rooms, await stored(answers))
    resumes = sum(page.resumes for room in rooms for page in room.pages)
    snapshots = sum(v.snapshots for room in rooms for p in room.pages for v in p.views.values())
    overlaps = sum(v.overlaps for room in rooms for p in room.pages for v in p.views.values())
    reconnects = sum(page.connects - 1 for room in rooms for page in room.pages)

    def settled() -> bool:
        return all(
            rss_kib(s) <= 1.10 * before for s, before in zip(servers, start_rss, strict=True)
        )

    returned = await wait_for(settled, timeout=20, interval=1.0)
    end_rss = [rss_kib(s) for s in servers]
    repaired = sum(s.log().count("repaired") for s in servers)
    logged = log_problems(*servers)

    report(
        "tried",
        f"{USERS} users x {SOCKETS} sockets = {USERS * SOCKETS} sockets over 2 daphne "
        f"processes + Redis, 1 driver + {SOCKETS - 1} viewers per conversation, answers of "
        f"{len(REPLY.split())} tokens every {TOKEN_DELAY} s, re-asking for {SECONDS:.0f} s; "
        f"open files limit {limits[0]}",
    )
    report(
        "measured",
        f"warm-up round {warm:.1f} s; load round {took:.1f} s, {len(answers)} answers "
        f"({len(answers) / took:.1f}/s), {len(answers) * (SOCKETS - 1)} viewer copies; page "
        f"heals: {resumes} resumes, {reconnects} reconnects, {snapshots} snapshots, "
        f"{overlaps} overlapping chunks dropped; server gap repairs: {repaired}",
    )
    report(
        "measured",
        "VmRSS KiB per server (samples in MiB): after warm-up "
        f"{start_rss}, sockets open {connected_rss}, end of load {peak_rss}, "
        f"after close {end_rss} ({growth(start_rss, end_rss)}); during load, every 5 s: "
        f"{samples}",
    )
    broken: dict[str, object] = {}
    if warm_problems or problems:
        broken["answers"] = (warm_problems + problems)[:10]
    if logged:
        errors = collections.Counter(
            line.split(" ERROR ", 1)[1][:120] for line in logged if " ERROR " in line
        )
        broken["server log"] = dict(errors) or logged[:10]
    if not returned:
        broken["memory"] = f"VmRSS {start_rss} -> {end_rss} KiB ({growth(start_rss, end_rss)})"
    assert not broken, broken
    report(
        "held",
        "every answer done with the whole reply; every socket's text = the database's, "
        "verified, no gap or duplicate; the driver's tokens = the text; no error logged; "
        "memory back within 10% of the warm start",
    )
