"""2. The driver's token path against a raw websocket echo, through the same daphne.

One daphne process serves both sides (``bench.echo_asgi``). Driven: a logged-in socket
per stream sends a ``prompt`` to the chat consumer, which stores the messages, claims a
stream and drives the demo answer (364 tokens) to it while batching, persisting and
announcing chunks. Echo: a socket per stream sends the same prompt to ``/bench/echo/``,
which sends the same token frames and nothing else. Both sources are the same
generator, stamped as each token is produced, so a token's latency is its arrival at
the client minus its production time, on one clock.

* As fast as possible (pace 0), the demo answer three times over (1,092 tokens a
  stream; once, 364 tokens, with 100 streams): tokens per second delivered to all
  clients together, from the sending of the prompts to the last token (the goal's
  measure), and in the steady state (from the moment every stream has sent its first
  token to the moment the first one ends; none when the streams never all ran at once),
  and the time to the first token.
* At a realistic pace (40 tokens/s a stream): latency per token, p50 and p99.
"""

# The report is typeset: en dashes for ranges, × for ratios, on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async

from bench import helpers
from bench.clients import STATUS_WAIT, Drive, drive
from bench.helpers import Context, Goal, Section, Table, median, num, percentile, ratio, spread
from bench.invariants import Violations, add_invariants, database_check

PACE = 40
FAST_REPEAT = 3


@dataclass
class Run:
    drives: list[Drive] = field(default_factory=list)
    started: float = 0.0
    latencies: list[float] = field(default_factory=list)
    #: Per stream whose tokens all came: when each was produced, and when it arrived.
    timed: list[tuple[list[float], list[float]]] = field(default_factory=list)

    @property
    def arrivals(self) -> list[list[float]]:
        return [d.arrivals for d in self.drives]

    @property
    def first_token(self) -> list[float]:
        return [d.arrivals[0] - self.started for d in self.drives]

    @property
    def lost_status(self) -> int:
        return sum(d.check.final is None for d in self.drives)

    @property
    def throughput(self) -> float:
        """Tokens per second delivered, from sending the prompts to the last token."""
        last = max(stream[-1] for stream in self.arrivals)
        return sum(len(stream) for stream in self.arrivals) / (last - self.started)

    @property
    def steady(self) -> float:
        """Tokens per second while every stream was running (NaN if they never all were)."""
        begin = max(stream[0] for stream in self.arrivals)
        end = min(stream[-1] for stream in self.arrivals)
        if end <= begin:
            return float("nan")
        count = sum(sum(1 for t in stream if begin <= t <= end) for stream in self.arrivals)
        return count / (end - begin)


async def open_drivers(
    server: helpers.BenchServer, side: str, clients: list[helpers.Client], *, via_llm: bool
) -> list[Any]:
    """A driver socket per client: echo sockets (fed by the provider ``via_llm``), or
    the chat sockets of each client's conversation."""
    if side == "echo":
        paths: list[str] = ["/bench/echo/llm/" if via_llm else "/bench/echo/"] * len(clients)
        cookies: list[str | None] = [None] * len(clients)
    else:
        paths = await sync_to_async(helpers.conversation_paths)(clients)
        cookies = [c.cookie for c in clients]
    return await helpers.connect_many(
        len(clients), lambda i: helpers.ws_connect(server, paths[i], cookies[i])
    )


async def one_run(
    server: helpers.BenchServer,
    *,
    side: str,
    streams: int,
    pace: float,
    options: str,
    tag: str,
    clients: list[helpers.Client],
    violations: Violations,
    llm: helpers.LLMServer | None = None,
    stagger: float = 0.0,
) -> Run:
    """``streams`` prompts at once (or spread over ``stagger`` seconds), on echo sockets
    or on chat sockets of one user each; the invariants of every stream are checked.
    With ``llm``, the tokens come from that server through the ``openai`` provider."""
    sockets = await open_drivers(server, side, clients[:streams], via_llm=llm is not None)
    prompts = [f"bench pace={pace:g} {options} {tag} stream={i}" for i in range(streams)]
    delays = [stagger * i / streams for i in range(streams)]
    try:
        started = time.monotonic()
        drives = await asyncio.gather(
            *(
                drive(ws, prompt, who=f"{side} stream {i}", delay=delays[i])
                for i, (ws, prompt) in enumerate(zip(sockets, prompts, strict=True))
            )
        )
    finally:
        await helpers.close_all(sockets)
    if llm is not None:
        stamps, calls = await asyncio.to_thread(llm.stamps)
    else:
        stamps, calls = await asyncio.to_thread(helpers.fetch_stamps, server)
    run = Run(drives=list(drives), started=started)
    where = f"{side}, {streams} streams, {tag}"
    expected: dict[str, str] = {}
    for d in drives:
        d.check.verify(d.expected, tokens=True, chunks=side != "echo")
        produced = stamps.get(d.prompt, [])
        if not d.arrivals or len(produced) != len(d.arrivals):
            d.check.problems.append(f"{len(d.arrivals)} tokens arrived, {len(produced)} made")
        else:
            run.latencies += [a - p for a, p in zip(d.arrivals, produced, strict=True)]
            run.timed.append((produced, d.arrivals))
        if side != "echo" and d.stream_id:
            expected[d.stream_id] = d.expected
    violations.add_checks(where, [d.check for d in drives])
    violations.llm_calls(where, calls, prompts)
    if expected:
        for stream_id, problem in await sync_to_async(database_check)(expected):
            violations.add(f"{where}, stream {stream_id}", [problem])
    if not all(d.arrivals for d in drives):
        raise RuntimeError(f"{where}: a stream got no token: {violations.note()}")
    return run


async def _measure(ctx: Context, server: helpers.BenchServer, violations: Violations) -> dict:
    sizes = ctx.sizes([1, 10, 100], [1, 10])
    clients = await sync_to_async(helpers.make_clients)("tokens", max(sizes))
    paced_tokens = 100 if ctx.quick else 200
    runs: dict[tuple[str, str, int], list[Run]] = {}
    common = {"server": server, "clients": clients, "violations": violations}
    for side in ("echo", "driven"):  # warm-up: imports, first connections, caches
        await one_run(side=side, streams=2, pace=0, options="", tag="warmup", **common)
    for repeat in range(ctx.repeats):
        for mode, pace in (("fast", 0), ("paced", PACE)):
            for streams in sizes:
                if mode == "paced":
                    options = f"tokens={paced_tokens}"
                else:
                    options = f"repeat={FAST_REPEAT if streams < 100 else 1}"
                for side in ("echo", "driven"):
                    tag = f"run={repeat}-{mode}-{streams}-{side}"
                    helpers.log(f"token path: {side}, {streams} streams, {mode} ({repeat + 1})")
                    run = await one_run(
                        side=side, streams=streams, pace=pace, options=options, tag=tag, **common
                    )
                    runs.setdefault((mode, side, streams), []).append(run)
    return {"runs": runs, "sizes": sizes, "paced_tokens": paced_tokens}


def run(ctx: Context) -> Section:
    section = Section(
        "token-path",
        "2. Driver token path vs raw websocket echo",
        __doc__.split("\n\n", 1)[1].strip(),
    )
    violations = Violations()
    server = helpers.BenchServer(
        helpers.server_env(ctx, BENCH_INSTRUMENT="1"), profile=helpers.profile_path(ctx, "daphne")
    )
    with helpers.running(server, log_dir=ctx.work_dir):
        measured = asyncio.run(_measure(ctx, server, violations))
    runs, sizes = measured["runs"], measured["sizes"]

    fast = Table(
        "As fast as possible: tokens/s delivered (all streams together)",
        ["streams", "raw echo tok/s", "driven tok/s", "driven ÷ echo", "steady: echo / driven",
         "echo p50 / p99 ms", "driven p50 / p99 ms", "first token, driven ms",
         "final status lost"],
    )  # fmt: skip
    paced = Table(
        f"At {PACE} tokens/s a stream: latency per token, production → arrival at the client",
        ["streams", "echo p50 ms", "echo p99 ms", "driven p50 ms", "driven p99 ms",
         "added p50 ms", "added p99 ms", "final status lost"],
    )  # fmt: skip
    plot: dict[str, list[float]] = {"echo": [], "driven": []}
    for streams in sizes:
        echo, driven = runs[("fast", "echo", streams)], runs[("fast", "driven", streams)]
        e_tps, d_tps = [r.throughput for r in echo], [r.throughput for r in driven]
        plot["echo"].append(median(e_tps))
        plot["driven"].append(median(d_tps))
        fast.add(
            streams,
            spread(e_tps),
            spread(d_tps),
            ratio(median(d_tps), median(e_tps)),
            f"{num(median([r.steady for r in echo]))} / {num(median([r.steady for r in driven]))}",
            _p50_p99(echo),
            _p50_p99(driven),
            spread([median(r.first_token) * 1000 for r in driven], 1),
            f"{sum(r.lost_status for r in driven)} of {streams * len(driven)}",
        )
        section.goals.append(
            Goal(
                f"throughput at {streams} stream(s)",
                "≥ 0.8 × raw echo",
                ratio(median(d_tps), median(e_tps)),
                median(d_tps) >= 0.8 * median(e_tps),
            )
        )
        pe, pd = runs[("paced", "echo", streams)], runs[("paced", "driven", streams)]
        e50, e99 = _pct(pe, 50), _pct(pe, 99)
        d50, d99 = _pct(pd, 50), _pct(pd, 99)
        paced.add(
            streams,
            spread(e50, 2),
            spread(e99, 2),
            spread(d50, 2),
            spread(d99, 2),
            num(median(d50) - median(e50), 2),
            num(median(d99) - median(e99), 2),
            f"{sum(r.lost_status for r in pd)} of {streams * len(pd)}",
        )
    lost = sum(r.lost_status for key, rs in runs.items() if key[1] == "driven" for r in rs)
    total = sum(len(r.arrivals) for key, rs in runs.items() if key[1] == "driven" for r in rs)
    section.goals.append(
        Goal(
            "every driven stream's final status reaches its socket",
            "all",
            f"{lost} of {total} lost (waited {STATUS_WAIT:.0f} s after the last token)",
            lost == 0,
        )
    )
    section.tables += [fast, paced]
    add_invariants(section, violations)
    section.notes.append(
        f"Paced runs send the first {measured['paced_tokens']} tokens of the demo answer; "
        f"fast runs send it {FAST_REPEAT} times over (once with 100 streams). "
        "The first token's time counts from "
        "the sending of the prompt, so on the driven side it includes the chat's per-prompt "
        "work: storing the prompt, creating and claiming the stream."
    )
    section.plots.append(_plot(ctx, sizes, plot))
    return section


def _pct(runs: list[Run], q: float) -> list[float]:
    return [percentile(r.latencies, q) * 1000 for r in runs]


def _p50_p99(runs: list[Run]) -> str:
    return f"{num(median(_pct(runs, 50)), 1)} / {num(median(_pct(runs, 99)), 1)}"


def _plot(ctx: Context, sizes: list[int], series: dict[str, list[float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = "bench-token-path.png"
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, values in (("raw echo", series["echo"]), ("driven (ours)", series["driven"])):
        ax.plot(sizes, values, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("concurrent streams (one daphne process)")
    ax.set_ylabel("tokens/s delivered")
    ax.set_ylim(bottom=0)
    ax.set_title("Token path, LLM as fast as possible")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(ctx.docs_dir / name, dpi=110)
    plt.close(fig)
    return name
