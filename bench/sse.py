"""12. Server-Sent Events: readers of ``GET /api/streams/<id>/events/`` against the same
number of websocket viewers, for latency and for memory.

Latency. Two daphne processes share Redis, as in 3. One conversation; a driver socket on
the first process sends a prompt whose answer (the demo text at 100 tokens/s, with
``--quick`` its first 150 tokens) waits until every reader is in place. Websocket side:
N logged-in chat sockets on the conversation, spread evenly over the two processes (a
single one on the process that does not drive), learn of the stream from the prompt's
``message`` frame. SSE side: N real HTTP clients (aiohttp, one connection each, a
session cookie each) spread the same way open the stream's event stream; once every
response has begun, a second passes for the subscriptions. Then the answer starts. Each
``chunk`` carries the commit time of its writer round (``bench_commit``), so a reader's
latency is its arrival minus the commit, on the machine's one clock. Both sides are the
same answer, checked against the contract at every reader (the driver's text exactly,
no gap, no duplicate, the final status).

Memory. A fresh daphne is warmed up (a few sockets, a few event streams, one short
answer), its RSS read from ``/proc/<pid>/status``; then 1,000 idle readers of one stream
that is streaming but silent (its answer waits) are opened: event streams, or on another
fresh daphne chat sockets of its conversation; two seconds later RSS is read again; the
difference divided by the count is one reader's cost.
"""

# The report is typeset: en dashes for ranges, × for ratios, on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async

from bench import helpers
from bench.clients import Follow, drive, follow_socket, follow_sse
from bench.fanout import Delivery, delivery
from bench.helpers import Context, Goal, Section, Table, median, num, ratio, spread
from bench.invariants import Violations, add_invariants

PACE = 100
#: The fanout goal's bound, applied to SSE: our p99 at most this many times the sockets'.
P99_BOUND = 1.25
SETTLE = 2.0
MEMORY_READERS = 1000
#: Event streams a client opens at once (a browser opens six per host).
OPENING = 8


def _conversation(user: Any) -> tuple[int, str]:
    from chatproject.chat.models import Conversation

    conversation = Conversation.objects.create(owner=user)
    return conversation.pk, conversation.group_name


def _release(server: helpers.BenchServer) -> None:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.http_url + "/bench/release/", data=b"", timeout=60) as response:
        assert response.status == 204


def _session() -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=60),
    )


async def _one(
    kind: str, servers: list[helpers.BenchServer], user: Any, cookie: str, size: int,
    tag: str, limit: str, violations: Violations,
) -> Delivery:  # fmt: skip
    """One answer followed by ``size`` readers of one kind ("ws" or "sse")."""
    front, back = servers
    pk, _ = await sync_to_async(_conversation)(user)
    path = f"/ws/conversations/{pk}/"

    def place(i: int) -> helpers.BenchServer:
        return back if i % 2 == 0 else front

    viewers: list[Any] = []
    session = _session() if kind == "sse" else None
    if kind == "ws":
        viewers = await helpers.connect_many(
            size, lambda i: helpers.ws_connect(place(i), path, cookie)
        )
    driver = await helpers.ws_connect(front, path, cookie)
    try:
        prompt = f"bench pace={PACE} {limit} gate {tag}"
        followers: list[asyncio.Task[Follow]] = []
        if kind == "ws":
            followers = [
                asyncio.create_task(follow_socket(v, who=f"socket {i}"))
                for i, v in enumerate(viewers)
            ]
        driven = asyncio.create_task(drive(driver, prompt))
        stream_id = await _stream_id(driven, pk)
        if kind == "sse":
            ready = [asyncio.Event() for _ in range(size)]
            opening = asyncio.Semaphore(OPENING)
            followers = [
                asyncio.create_task(
                    follow_sse(
                        session, f"{place(i).http_url}/api/streams/{stream_id}/events/",
                        cookie, ready=ready[i], opening=opening, who=f"reader {i}",
                    )
                )
                for i in range(size)
            ]  # fmt: skip
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 120)
        await asyncio.sleep(max(1.0, size / 1000))  # subscriptions and message frames land
        await asyncio.to_thread(_release, front)
        run = await driven
        follows = await asyncio.gather(*followers)
    finally:
        await helpers.close_all([*viewers, driver])
        if session is not None:
            await session.close()
    where = f"{kind}, {size} readers, {tag}"
    run.check.verify(run.expected, tokens=True)
    for follow in follows:
        follow.check.verify(run.expected, tokens=False)
    violations.add_checks(where, [run.check, *(f.check for f in follows)])
    _, calls = await asyncio.to_thread(helpers.fetch_stamps, front)
    violations.llm_calls(where, calls, [prompt])
    return delivery(list(follows), len(run.commits))


async def _stream_id(driven: asyncio.Task[Any], conversation: int) -> str:
    """The stream of the conversation's newest answer, once it exists."""
    from chatproject.chat.models import Message

    def newest() -> str | None:
        message = (
            Message.objects.filter(conversation_id=conversation, role="assistant")
            .exclude(stream=None)
            .order_by("-id")
            .first()
        )
        return str(message.stream_id) if message else None

    for _ in range(3000):
        if driven.done():
            driven.result()
        stream_id = await sync_to_async(newest)()
        if stream_id:
            return stream_id
        await asyncio.sleep(0.02)
    raise RuntimeError("the prompt made no stream")


async def _latency(
    ctx: Context, servers: list[helpers.BenchServer], violations: Violations
) -> dict[tuple[str, int], list[Delivery]]:
    sizes = ctx.sizes([1, 100, 1000], [1, 100])
    limit = "tokens=150" if ctx.quick else ""
    user = await sync_to_async(helpers.make_user)("sse")
    cookie = await sync_to_async(helpers.session_cookie)(user)
    results: dict[tuple[str, int], list[Delivery]] = {}
    for kind in ("ws", "sse"):  # warm-up
        await _one(kind, servers, user, cookie, 2, f"warmup {kind}", "tokens=40", Violations())
    for size in sizes:
        for repeat in range(min(ctx.repeats, 2)):
            for kind in ("ws", "sse"):
                helpers.log(f"sse: {size} {kind} readers ({repeat + 1})")
                tag = f"run {kind} {size} {repeat}"
                got = await _one(kind, servers, user, cookie, size, tag, limit, violations)
                results.setdefault((kind, size), []).append(got)
        await asyncio.sleep(1)
    return results


async def _idle(ctx: Context, kind: str, count: int) -> tuple[float, float]:
    """RSS (KiB) and threads added per idle reader of a silent stream, on a fresh
    daphne."""
    env = helpers.server_env(ctx, BENCH_INSTRUMENT="1")
    server = helpers.BenchServer(env)
    user = await sync_to_async(helpers.make_user)(f"idle-{kind}")
    cookie = await sync_to_async(helpers.session_cookie)(user)
    pk, _ = await sync_to_async(_conversation)(user)
    path = f"/ws/conversations/{pk}/"
    server.start(ctx.work_dir)
    session = _session()
    sockets: list[Any] = []
    readers: list[asyncio.Task[Any]] = []
    try:
        warm = await helpers.ws_connect(server, path, cookie)
        sockets.append(warm)
        short = await drive(warm, "bench pace=0 tokens=30 warm")
        for _ in range(3):
            await follow_sse(session, f"{server.http_url}/api/streams/{short.stream_id}/events/",
                             cookie)  # fmt: skip
        driven = asyncio.create_task(drive(warm, "bench pace=5 gate silent"))
        stream_id = await _stream_id(driven, pk)
        await asyncio.sleep(SETTLE)
        before, threads = server.rss_kib(), server.threads()
        if kind == "ws":
            sockets += await helpers.connect_many(
                count, lambda i: helpers.ws_connect(server, path, cookie)
            )
        else:
            ready = [asyncio.Event() for _ in range(count)]
            opening = asyncio.Semaphore(OPENING)
            url = f"{server.http_url}/api/streams/{stream_id}/events/"
            readers = [
                asyncio.create_task(
                    follow_sse(session, url, cookie, ready=ready[i], opening=opening)
                )
                for i in range(count)
            ]
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 120)
        await asyncio.sleep(SETTLE)
        after, threads = server.rss_kib(), server.threads() - threads
        driven.cancel()
    finally:
        for reader in readers:
            reader.cancel()
        await helpers.close_all(sockets)
        await session.close()
        server.stop()
    return (after - before) / count, threads / count


def run(ctx: Context) -> Section:
    section = Section("sse", "12. Server-Sent Events", __doc__.split("\n\n", 1)[1].strip())
    if not ctx.redis_url:
        section.notes.append("Skipped: REDIS_URL is not set (two processes need Redis).")
        section.goals.append(Goal("SSE latency", "measured with Redis", "skipped", None))
        return section
    helpers.raise_nofile(8192)
    violations = Violations()
    env = helpers.server_env(ctx, BENCH_INSTRUMENT="1")
    servers = [
        helpers.BenchServer(env, profile=helpers.profile_path(ctx, name))
        for name in ("front", "back")
    ]
    with helpers.running(*servers, log_dir=ctx.work_dir):
        results = asyncio.run(_latency(ctx, servers, violations))
    count = 200 if ctx.quick else MEMORY_READERS
    memory: dict[str, list[float]] = {}
    threads: dict[str, list[float]] = {}
    for repeat in range(min(ctx.repeats, 2)):
        for kind in ("ws", "sse"):
            helpers.log(f"sse: memory, {count} idle {kind} readers ({repeat + 1})")
            kib, added = asyncio.run(_idle(ctx, kind, count))
            memory.setdefault(kind, []).append(kib)
            threads.setdefault(kind, []).append(added)

    table = Table(
        "Commit → arrival at each reader, ms (all readers × all chunks of a run)",
        ["readers", "websocket p50", "websocket p99", "SSE p50", "SSE p99", "p50 ratio",
         "p99 ratio", "lost / from the database (SSE)", "final status lost (SSE)"],
    )  # fmt: skip
    sizes = sorted({size for _, size in results})
    for size in sizes:
        ws, sse = results[("ws", size)], results[("sse", size)]
        w50, w99 = [d.pct(50) for d in ws], [d.pct(99) for d in ws]
        s50, s99 = [d.pct(50) for d in sse], [d.pct(99) for d in sse]
        table.add(
            size,
            spread(w50, 1),
            spread(w99, 1),
            spread(s50, 1),
            spread(s99, 1),
            ratio(median(s50), median(w50)),
            ratio(median(s99), median(w99)),
            f"{num(median([d.lost for d in sse]) * 100, 1)} % / "
            f"{num(median([d.repaired for d in sse]))}",
            f"{sum(d.lost_status for d in sse)} of {size * len(sse)}",
        )
        section.goals.append(
            Goal(
                f"SSE p99 at {size} readers",
                f"≤ {P99_BOUND} × websocket viewers (the fanout bound)",
                f"{num(median(s99), 1)} ms vs {num(median(w99), 1)} ms "
                f"({ratio(median(s99), median(w99))})",
                median(s99) <= P99_BOUND * median(w99),
            )
        )
    section.tables.append(table)
    mem = Table(
        f"Resident memory added to the daphne process per idle reader, KiB ({count:,} readers)",
        ["reader", "KiB", "÷ websocket viewer", f"for {count:,}", "threads added per reader"],
    )
    for kind, label in (("ws", "websocket viewer (chat socket)"), ("sse", "SSE reader")):
        cost = median(memory[kind])
        mem.add(label, spread(memory[kind], 1), ratio(cost, median(memory["ws"]), 1),
                f"{num(cost * count / 1024, 1)} MiB", num(median(threads[kind]), 2))  # fmt: skip
    section.tables.append(mem)
    section.goals.append(
        Goal(
            "memory per idle SSE reader",
            "measured beside a websocket viewer",
            f"{num(median(memory['sse']), 1)} KiB vs {num(median(memory['ws']), 1)} KiB",
            None,
        )
    )
    add_invariants(section, violations)
    section.notes.append(
        "From the database: chunks an SSE reader got without a stamp (its catch-up from the "
        "database when the stream already had chunks, or a repair after a lost group "
        "message). The readers' client is one Python process on the same 2 cores as both "
        "servers, Redis and the database, on both sides alike."
    )
    return section
