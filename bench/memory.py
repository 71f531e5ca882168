"""5. Memory: resident memory of a daphne process per idle viewer socket and per active
stream, against the raw echo consumer.

Each measurement starts a fresh daphne (``bench.echo_asgi``), warms it up with a few
sockets and one short stream, reads its RSS from ``/proc/<pid>/status``, opens the
sockets (or starts the streams), waits two seconds, and reads RSS again; the
difference divided by the count is the cost of one.

* Idle viewers: 1,000 logged-in chat sockets on one conversation (each joined to its
  group) against 1,000 echo sockets.
* Active streams: 100 chat sockets that each drive a stream (demo text at 5 tokens/s,
  so every stream stays active while measured; the sockets were opened before the first
  reading, so only the streams count) against 100 echo sockets streaming the same
  tokens at the same pace.
"""

# The report is typeset: en dashes for ranges, × for ratios, on purpose.
# ruff: noqa: RUF003

from __future__ import annotations

import asyncio
import json
from typing import Any

from bench import helpers
from bench.helpers import Context, Goal, Section, Table, median, num, ratio, spread

FINAL = {"done", "error", "cancelled", "timeout"}
SETTLE = 2.0


Cookies = list[str | None]


async def _warm_up(server: helpers.BenchServer, paths: list[str], cookies: Cookies) -> None:
    pairs = zip(paths[:3], cookies[:3], strict=True)
    sockets = [await helpers.ws_connect(server, path, cookie) for path, cookie in pairs]
    await sockets[0].send(json.dumps({"type": "prompt", "text": "bench pace=0 tokens=30 warm"}))
    while True:
        frame = json.loads(await asyncio.wait_for(sockets[0].recv(), 60))
        if frame["type"] == "status" and frame["status"] in FINAL:
            break
    await helpers.close_all(sockets)
    await asyncio.sleep(SETTLE)


async def _idle(server: helpers.BenchServer, paths: list[str], cookies: Cookies) -> float:
    await _warm_up(server, paths, cookies)
    before = server.rss_kib()
    sockets = await helpers.connect_many(
        len(paths), lambda i: helpers.ws_connect(server, paths[i], cookies[i])
    )
    await asyncio.sleep(SETTLE)
    after = server.rss_kib()
    await helpers.close_all(sockets)
    return (after - before) / len(paths)


async def _follow(
    ws: Any, counts: list[int], index: int, stream_ids: dict[int, str], flowing: asyncio.Event
) -> None:
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "token":
            counts[index] += 1
            if min(counts) >= 3:
                flowing.set()
        elif frame["type"] == "message" and frame.get("driving"):
            stream_ids[index] = frame["message"]["stream_id"]
        elif frame["type"] == "status" and frame["status"] in FINAL:
            return


async def _active(server: helpers.BenchServer, paths: list[str], cookies: Cookies) -> float:
    await _warm_up(server, paths, cookies)
    sockets = await helpers.connect_many(
        len(paths), lambda i: helpers.ws_connect(server, paths[i], cookies[i])
    )
    await asyncio.sleep(SETTLE)
    before = server.rss_kib()
    counts, stream_ids, flowing = [0] * len(sockets), {}, asyncio.Event()
    readers = [
        asyncio.create_task(_follow(ws, counts, i, stream_ids, flowing))
        for i, ws in enumerate(sockets)
    ]
    for i, ws in enumerate(sockets):
        await ws.send(json.dumps({"type": "prompt", "text": f"bench pace=5 repeat=20 s{i}"}))
    await asyncio.wait_for(flowing.wait(), 60)
    await asyncio.sleep(SETTLE)
    after = server.rss_kib()
    for i, ws in enumerate(sockets):  # chat streams: cancel; echo: the disconnect stops it
        if i in stream_ids:
            await ws.send(json.dumps({"type": "cancel", "stream_id": stream_ids[i]}))
    if stream_ids:  # a lost final status must not hang the benchmark: give up after 30 s
        await asyncio.wait(readers, timeout=30)
    for reader in readers:
        reader.cancel()
    await helpers.close_all(sockets)
    return (after - before) / len(paths)


def _measure(
    ctx: Context, kind: str, side: str, count: int, viewer: helpers.Client,
    clients: list[helpers.Client],
) -> float:  # fmt: skip
    """One fresh daphne: ``count`` idle viewers of one conversation of one user, or
    ``count`` active streams, each its user's (the flood limit holds per user)."""
    server = helpers.BenchServer(helpers.server_env(ctx, BENCH_INSTRUMENT="1"))
    cookies: Cookies
    if side == "echo":
        paths, cookies = ["/bench/echo/"] * count, [None] * count
    elif kind == "idle":
        paths = helpers.conversation_paths([viewer]) * count
        cookies = [viewer.cookie] * count
    else:
        paths = helpers.conversation_paths(clients[:count])
        cookies = [c.cookie for c in clients[:count]]
    with helpers.running(server, log_dir=ctx.work_dir):
        measure = _idle if kind == "idle" else _active
        return asyncio.run(measure(server, paths, cookies))


def run(ctx: Context) -> Section:
    section = Section("memory", "5. Memory", __doc__.split("\n\n", 1)[1].strip())
    helpers.raise_nofile(8192)
    sizes = {"idle": 200 if ctx.quick else 1000, "active": 20 if ctx.quick else 100}
    viewer, *clients = helpers.make_clients("memory", sizes["active"] + 1)
    results: dict[tuple[str, str], list[float]] = {}
    for repeat in range(ctx.repeats):
        for kind, count in sizes.items():
            for side in ("echo", "chat"):
                helpers.log(f"memory: {kind}, {side}, {count} ({repeat + 1})")
                value = _measure(ctx, kind, side, count, viewer, clients)
                results.setdefault((kind, side), []).append(value)
    table = Table(
        "Resident memory added to the daphne process, KiB",
        [
            "what",
            "raw echo",
            "ours",
            "ours ÷ echo",
            f"ours for {sizes['idle']:,} / {sizes['active']:,}",
        ],
    )
    for kind, label in (("idle", "per idle viewer socket"), ("active", "per active stream")):
        echo, ours = results[(kind, "echo")], results[(kind, "chat")]
        table.add(
            label,
            spread(echo, 1),
            spread(ours, 1),
            ratio(median(ours), median(echo), 1),
            f"{num(median(ours) * sizes[kind] / 1024, 1)} MiB",
        )
    section.tables.append(table)
    section.goals.append(
        Goal(
            "memory per idle viewer / per active stream",
            "measured (no fixed bound)",
            f"{num(median(results[('idle', 'chat')]), 1)} KiB / "
            f"{num(median(results[('active', 'chat')]), 1)} KiB",
            None,
        )
    )
    layer = (
        "Redis (groups live in Redis, not in daphne)"
        if ctx.redis_url
        else "in-memory (groups live in the daphne process)"
    )
    section.notes.append(
        "RSS moves in pages and Python keeps freed memory in its arenas, so single readings "
        "are coarse; the per-socket figure is a difference over "
        f"{sizes['idle']:,} sockets and the per-stream one over {sizes['active']} streams. "
        f"Channel layer: {layer}."
    )
    return section
