"""3. Fanout: from a chunk's commit to its arrival at every viewer, against a plain
``group_send`` of the same payloads to the same sockets.

Two daphne processes share Redis (channels-redis core layer, the project's setting).
One conversation; its viewers are logged-in chat sockets spread evenly over the two
processes (a single viewer sits on the process that does not drive). A driver socket on
the first process sends a prompt; the demo answer (364 tokens, about 31 chunks; with
``--quick`` its first 150 tokens) is generated at 100 tokens/s. Each ``chunk`` frame
carries the time of its commit (``bench_commit``: when the process writer's round that
wrote it committed), and a viewer's latency is its arrival minus that stamp, on
the machine's one monotonic clock.

Baseline, right after, on the same sockets: the driver's daphne process announces a
new stream to the conversation's group as a prompt does (one ``chat.message`` event),
then sends the same chunk payloads with the same spacing by plain ``group_send``, each
stamped just before the call, then a final status (``POST /bench/replay/`` of
``bench.echo_asgi``). So the baseline has the same sending process, consumers, mixin
and Redis, but no driver, no writer and no database. Every viewer's frames are checked
against the contract (the driver's text exactly, no gap, no duplicate, the final
status) on both sides.
"""

# The report is typeset: en dashes for ranges, × for ratios, on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async

from bench import helpers
from bench.clients import Drive, Follow, drive, follow_socket
from bench.helpers import Context, Goal, Section, Table, median, num, percentile, ratio, spread
from bench.invariants import Violations, add_invariants

PACE = 100

#: The issue's goal: our p99 at most this many times the plain layer's.
P99_BOUND = 1.25


@dataclass
class Delivery:
    latencies: list[float] = field(default_factory=list)  # seconds, every viewer and chunk
    expected: int = 0
    repaired: int = 0  # chunks a viewer got from the database (gap repair / snapshot)
    lost_status: int = 0  # viewers whose final status frame never came

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    @property
    def lost(self) -> float:
        return 1 - len(self.latencies) / self.expected if self.expected else 0.0


def delivery(follows: list[Follow], expected: int) -> Delivery:
    """What ``follows`` (one per viewer) got of a stream of ``expected`` live chunks."""
    result = Delivery(expected=expected * len(follows))
    for follow in follows:
        result.latencies += follow.latencies
        result.repaired += follow.unstamped
        result.lost_status += follow.check.final is None
    return result


async def run_ours(
    front: helpers.BenchServer, driver: Any, viewers: list[Any], tag: str, limit: str,
    violations: Violations,
) -> tuple[Delivery, Drive]:  # fmt: skip
    """A prompt on the driver socket; every viewer follows the answer it announces."""
    followers = [
        asyncio.create_task(follow_socket(v, who=f"viewer {i}")) for i, v in enumerate(viewers)
    ]
    prompt = f"bench pace={PACE} {limit} {tag}"
    driven = await drive(driver, prompt)
    follows = await asyncio.gather(*followers)
    where = f"ours, {len(viewers)} viewers, {tag}"
    driven.check.verify(driven.expected, tokens=True)
    for follow in follows:
        follow.check.verify(driven.expected, tokens=False)
    violations.add_checks(where, [driven.check, *(f.check for f in follows)])
    _, calls = await asyncio.to_thread(helpers.fetch_stamps, front)
    violations.llm_calls(where, calls, [prompt])
    return delivery(list(follows), len(driven.commits)), driven


def _baseline_stream(group: str) -> str:
    """A stream row for the baseline's frames: nobody drives it, and without an owner it
    counts against nobody's limit of active streams (it is left to its lease)."""
    import streaming

    return str(streaming.create_stream(group=group).id)


def _post_replay(server: helpers.BenchServer, request: dict[str, Any]) -> None:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = json.dumps(request).encode()
    with opener.open(server.http_url + "/bench/replay/", data=data, timeout=300) as response:
        assert response.status == 204, response.status


async def run_baseline(
    sender: helpers.BenchServer,
    viewers: list[Any],
    driven: Drive,
    user: Any,
    group: str,
    violations: Violations,
) -> Delivery:
    """The same chunks, with the same spacing, by plain ``group_send`` from the
    driver's process, announced to the viewers as a prompt announces a stream."""
    stream_id = await sync_to_async(_baseline_stream)(group)
    followers = [
        asyncio.create_task(follow_socket(v, stream_id, who=f"viewer {i}"))
        for i, v in enumerate(viewers)
    ]
    chunks = driven.check.chunks[: len(driven.commits)]
    delays = [0.0] + [later - earlier for earlier, later in itertools.pairwise(driven.commits)]
    request = {
        "group": group,
        "stream_id": stream_id,
        "chunks": [{"text": c, "delay": d} for c, d in zip(chunks, delays, strict=True)],
    }
    await asyncio.to_thread(_post_replay, sender, request)
    follows = await asyncio.gather(*followers)
    for follow in follows:
        follow.check.verify("".join(chunks), tokens=False)
    violations.add_checks(f"baseline, {len(viewers)} viewers", [f.check for f in follows])
    return delivery(list(follows), len(chunks))


def _conversation(user: Any) -> tuple[int, str]:
    from chatproject.chat.models import Conversation

    conversation = Conversation.objects.create(owner=user)
    return conversation.pk, conversation.group_name


async def _measure(
    ctx: Context, servers: list[helpers.BenchServer], user: Any, cookie: str,
    violations: Violations,
) -> tuple[list[int], dict[int, dict[str, list[Delivery]]]]:  # fmt: skip
    sizes = ctx.sizes([1, 10, 100, 1000], [1, 10, 100])
    front, back = servers
    limit = "tokens=150" if ctx.quick else ""
    results: dict[int, dict[str, list[Delivery]]] = {}
    for size in sizes:
        pk, group = await sync_to_async(_conversation)(user)
        path = f"/ws/conversations/{pk}/"
        helpers.log(f"fanout: connecting {size} viewers")
        viewers = await helpers.connect_many(
            size,
            lambda i, path=path: helpers.ws_connect(back if i % 2 == 0 else front, path, cookie),
        )
        driver = await helpers.ws_connect(front, path, cookie)
        try:
            if size == sizes[0]:
                await run_ours(front, driver, viewers, "warmup", limit, Violations())
            for repeat in range(ctx.repeats):
                helpers.log(f"fanout: {size} viewers ({repeat + 1})")
                tag = f"run {size} {repeat}"
                ours, driven = await run_ours(front, driver, viewers, tag, limit, violations)
                base = await run_baseline(front, viewers, driven, user, group, violations)
                results.setdefault(size, {}).setdefault("ours", []).append(ours)
                results[size].setdefault("baseline", []).append(base)
        finally:
            await helpers.close_all([driver, *viewers])
        await asyncio.sleep(1)
    return sizes, results


def run(ctx: Context) -> Section:
    section = Section("fanout", "3. Fanout over Redis", __doc__.split("\n\n", 1)[1].strip())
    if not ctx.redis_url:
        section.notes.append(
            "Skipped: REDIS_URL is not set. Fanout across processes needs the Redis channel "
            "layer; run `REDIS_URL=redis://… python -m bench` to measure it."
        )
        section.goals.append(Goal("fanout latency", "measured with Redis", "skipped", None))
        return section
    helpers.raise_nofile(8192)
    user = helpers.make_user("fanout")
    cookie = helpers.session_cookie(user)
    env = helpers.server_env(ctx, BENCH_INSTRUMENT="1")
    servers = [
        helpers.BenchServer(env, profile=helpers.profile_path(ctx, name))
        for name in ("front", "back")
    ]
    violations = Violations()
    with helpers.running(*servers, log_dir=ctx.work_dir):
        sizes, results = asyncio.run(_measure(ctx, servers, user, cookie, violations))

    table = Table(
        "Commit → arrival at each viewer, ms (all viewers × all chunks of a run)",
        ["viewers", "ours p50", "ours p99", "plain group_send p50", "plain group_send p99",
         "p50 ratio", "p99 ratio", "lost / repaired (ours)", "final status lost"],
    )  # fmt: skip
    plot: dict[str, list[float]] = {}
    for size in sizes:
        ours, base = results[size]["ours"], results[size]["baseline"]
        o50, o99 = [d.pct(50) for d in ours], [d.pct(99) for d in ours]
        b50, b99 = [d.pct(50) for d in base], [d.pct(99) for d in base]
        for key, values in (("ours p50", o50), ("ours p99", o99), ("base p50", b50),
                            ("base p99", b99)):  # fmt: skip
            plot.setdefault(key, []).append(median(values))
        lost = median([d.lost for d in ours]) * 100
        repaired = median([d.repaired for d in ours])
        table.add(
            size,
            spread(o50, 1),
            spread(o99, 1),
            spread(b50, 1),
            spread(b99, 1),
            ratio(median(o50), median(b50)),
            ratio(median(o99), median(b99)),
            f"{num(lost, 1)} % / {num(repaired)}",
            f"{sum(d.lost_status for d in ours)} of {size * len(ours)}",
        )
        section.goals.append(
            Goal(
                f"fanout p99 at {size} viewers",
                f"≤ {P99_BOUND} × plain group_send",
                f"{num(median(o99), 1)} ms vs {num(median(b99), 1)} ms "
                f"({ratio(median(o99), median(b99))})",
                median(o99) <= P99_BOUND * median(b99),
            )
        )
    section.tables.append(table)
    add_invariants(section, violations)
    section.notes.append(
        "Lost: stamped chunk frames that never arrived live (the channel layer dropped them "
        "over capacity); repaired: chunks a viewer then got from the database by the mixin's "
        "gap repair instead. The viewers' client is one Python process on the same 2 cores as "
        "both servers, Redis and the database, so at 1,000 viewers part of the tail is the "
        "client reading 1,000 sockets, on both sides alike."
    )
    section.plots.append(_plot(ctx, sizes, plot))
    return section


def _plot(ctx: Context, sizes: list[int], series: dict[str, list[float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = "bench-fanout.png"
    fig, ax = plt.subplots(figsize=(6, 3.6))
    styles = {"ours p50": "o-", "ours p99": "o--", "base p50": "s-", "base p99": "s--"}
    labels = {"ours p50": "ours p50", "ours p99": "ours p99", "base p50": "plain group_send p50",
              "base p99": "plain group_send p99"}  # fmt: skip
    for key, style in styles.items():
        ax.plot(sizes, series[key], style, label=labels[key])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("viewer sockets (two daphne processes)")
    ax.set_ylabel("commit → arrival, ms")
    ax.set_title("Fanout latency over Redis")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.docs_dir / name, dpi=110)
    plt.close(fig)
    return name
