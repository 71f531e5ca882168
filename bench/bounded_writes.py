"""11. Writes stay bounded: database transactions per second of one process as the
number of streams grows.

At each load (1, 10, 100 and 300 streams of 40 tokens/s through the ``openai``
provider on the benchmarks' LLM server, each 400 tokens long, the prompts spread over
the first second), on a daphne of its own that counts its own statements
(``BENCH_COUNT_SQL``), the benchmark samples every half second: the writer's rounds
(``streaming_writes_total`` at ``GET /metrics``), the process's write transactions (a
statement wrapper on every connection: rounds, prompts and anything else that writes),
and PostgreSQL's ``xact_commit`` for the benchmark's database in
``pg_stat_database`` (every committed transaction of every process, reads included;
PostgreSQL publishes it about once a second). Rates are over the steady window: from
the median stream's first token to the median stream's last, when most streams run and
few prompts arrive. Per answer: the process writer's chunk writes for that stream (its
share of the rounds), its chunk rows, and whether its seqs in the database are gapless
(with its text exactly what the LLM server sent: the contract's checks, as everywhere).
"""

# The report is typeset: en dashes for ranges, × for ratios, on purpose.
# ruff: noqa: RUF003

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async

from bench import helpers
from bench.helpers import Context, Goal, Section, Table, median, num
from bench.invariants import Violations, add_invariants
from bench.token_path import Run, one_run

PACE = 40
TOKENS = 400
SAMPLE_EVERY = 0.5


@dataclass
class Sample:
    at: float
    rounds: float
    writes: float
    xact: float | None


@dataclass
class Load:
    streams: int
    run: Run
    samples: list[Sample] = field(default_factory=list)
    appends: list[int] = field(default_factory=list)  # per stream
    chunks: list[int] = field(default_factory=list)  # per stream
    violations: int = 0

    def window(self) -> tuple[float, float]:
        """The steady window when it holds two samples a second apart; else (``steady``
        false) the whole run, from the sample before its prompts to the one after its
        last answer: a saturated process answers the sampler so late that even the span
        from the first token to the last may hold fewer than two samples."""
        if self.steady:
            return self._steady_window()
        return self.samples[0].at, self.samples[-1].at

    @property
    def steady(self) -> bool:
        """Whether the steady window holds two samples a second apart. A saturated
        process's streams never run together for long (their tokens come late and in
        heaps), and its metrics answer slowly."""
        begin, end = self._steady_window()
        inside = [s.at for s in self.samples if begin <= s.at <= end]
        return len(inside) >= 2 and inside[-1] - inside[0] >= 1.0

    def _steady_window(self) -> tuple[float, float]:
        """From the median stream's first token to the median stream's last: most of
        the streams run (an overloaded process may never have them all at once)."""
        arrivals = self._arrivals()
        return median([a[0] for a in arrivals]), median([a[-1] for a in arrivals])

    def _arrivals(self) -> list[list[float]]:
        return [d.arrivals for d in self.run.drives if d.arrivals]

    def rate(self, name: str) -> float:
        """Per second of ``window()`` (NaN when too short to say)."""
        begin, end = self.window()
        inside = [s for s in self.samples if begin <= s.at <= end]
        values = [(s.at, getattr(s, name)) for s in inside if getattr(s, name) is not None]
        if len(values) < 2 or values[-1][0] - values[0][0] < 1.0:
            return float("nan")
        return (values[-1][1] - values[0][1]) / (values[-1][0] - values[0][0])


def _xact_reader(ctx: Context) -> Any:
    """A function reading the benchmark database's committed transactions, or None
    (SQLite)."""
    if ctx.vendor != "postgresql":
        return None
    import psycopg
    from django.db import connection

    settings = connection.settings_dict
    admin = psycopg.connect(
        host=settings["HOST"] or "127.0.0.1", port=settings["PORT"] or 5432,
        user=settings["USER"] or "postgres", password=settings["PASSWORD"] or None,
        dbname="postgres", autocommit=True,
    )  # fmt: skip
    name = settings["NAME"]

    def read() -> float:
        row = admin.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
        return float(row[0]) if row else float("nan")

    read.close = admin.close  # type: ignore[attr-defined]
    return read


async def _sampler(
    server: helpers.BenchServer, xact: Any, samples: list[Sample], stop: asyncio.Event
) -> None:
    def one() -> Sample:
        counted = json.loads(helpers.http_get(server, "/bench/sql/"))
        rounds = helpers.metric(server.metrics(), "streaming_writes_total")
        return Sample(time.monotonic(), rounds, counted["write_transactions"],
                      xact() if xact else None)  # fmt: skip

    while not stop.is_set():
        samples.append(await asyncio.to_thread(one))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
    samples.append(await asyncio.to_thread(one))  # after the run: a whole run's end


def _chunk_counts(stream_ids: list[str]) -> dict[str, int]:
    from django.db.models import Count

    from streaming.models import Chunk

    rows = (
        Chunk.objects.filter(stream_id__in=stream_ids).values("stream_id").annotate(n=Count("id"))
    )
    return {str(row["stream_id"]): row["n"] for row in rows}


async def _load(
    ctx: Context, streams: int, llm: helpers.LLMServer, clients: list[helpers.Client],
    xact: Any, violations: Violations,
) -> Load:  # fmt: skip
    server = helpers.BenchServer(
        helpers.server_env(ctx, llm=llm, BENCH_COUNT_SQL="1"),
        profile=helpers.profile_path(ctx, f"{streams}"),
    )
    server.start(ctx.work_dir)
    found = Violations()
    try:
        common = {"server": server, "clients": clients, "llm": llm}
        await one_run(side="driven", streams=1, pace=PACE, options="tokens=10", tag="warmup",
                      violations=Violations(), **common)  # fmt: skip
        samples: list[Sample] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sampler(server, xact, samples, stop))
        helpers.log(f"bounded writes: {streams} streams")
        try:
            run = await one_run(
                side="driven", streams=streams, pace=PACE, stagger=1.0,
                options=f"repeat=2 tokens={TOKENS if not ctx.quick else 160}",
                tag=f"bounded={streams}", violations=found, **common,
            )  # fmt: skip
        finally:
            stop.set()
            await sampler
        appends = json.loads(helpers.http_get(server, "/bench/sql/?appends=1"))["appends"]
    finally:
        server.stop()
    violations.merge(found)
    ids = [d.stream_id for d in run.drives]
    chunks = await sync_to_async(_chunk_counts)(ids)
    return Load(streams, run, samples, [appends.get(i, 0) for i in ids],
                [chunks.get(i, 0) for i in ids], found.total)  # fmt: skip


async def _measure(ctx: Context, llm: helpers.LLMServer, violations: Violations) -> list[Load]:
    sizes = ctx.sizes([1, 10, 100, 300], [1, 10])
    clients = await sync_to_async(helpers.make_clients)("bounded", max(sizes))
    xact = await sync_to_async(_xact_reader)(ctx)
    try:
        return [await _load(ctx, n, llm, clients, xact, violations) for n in sizes]
    finally:
        if xact is not None:
            xact.close()


def run(ctx: Context) -> Section:
    section = Section("bounded", "11. Writes stay bounded", __doc__.split("\n\n", 1)[1].strip())
    from streaming.conf import app_settings

    helpers.raise_nofile(8192)
    violations = Violations()
    with helpers.LLMServer() as llm:
        loads = asyncio.run(_measure(ctx, llm, violations))
    bound = 1 / app_settings.FLUSH_MIN_INTERVAL
    table = Table(
        f"Per second of the steady window, one process ({PACE} tokens/s a stream)",
        ["streams", "tokens/s", "writer rounds/s", "write transactions/s (process)",
         "xact_commit/s (PostgreSQL, reads too)", "chunk writes / answer",
         "chunk rows / answer", "seqs gapless, text exact"],
    )  # fmt: skip
    for load in loads:
        begin, end = load.window()
        tokens = sum(sum(1 for t in d.arrivals if begin <= t <= end) for d in load.run.drives)
        table.add(
            load.streams if load.steady else f"{load.streams} (whole run)",
            num(tokens / (end - begin) if end > begin else float("nan")),
            num(load.rate("rounds"), 1),
            num(load.rate("writes"), 1),
            num(load.rate("xact"), 1),
            num(median(load.appends), 1),
            num(median(load.chunks), 1),
            "yes" if not load.violations else f"**no** ({load.violations} violations)",
        )
    section.tables.append(table)
    rates = [load.rate("rounds") for load in loads]
    measured = [r for r in rates if not math.isnan(r)]
    section.goals += [
        Goal(
            "write transactions per second, one process",
            f"bounded: ≤ {bound:g}/s (one round per STREAMING_FLUSH_MIN_INTERVAL) at every load",
            ", ".join(
                f"{num(load.rate('rounds'), 1)} rounds/s at {load.streams}"
                f" ({num(load.rate('writes'), 1)} write transactions/s)"
                for load in loads
            ),
            len(measured) == len(rates) and max(measured, default=0) <= bound * 1.05,
        ),
    ]
    add_invariants(section, violations)
    section.notes.append(
        "A load marked *whole run* had no steady window (its process was saturated: its "
        "streams never ran together for a second of samples), so its rates are over the "
        "whole run, from the sample before its prompts to the one after its last answer "
        "(its idle edges included, so they read low); its write transactions then "
        "include every prompt's."
    )
    section.notes.append(
        "Write transactions of the process besides the writer's rounds are its prompts' "
        "(one each, as 9. shows), so they follow the rate at which prompts arrive, not the "
        "number of streams; PostgreSQL's count adds every read-only transaction of every "
        "process (each statement outside a transaction is one, and so is the pool's check "
        "of a connection it hands out)."
    )
    section.notes.append(
        "Chunk writes per answer: how many of the writer's rounds wrote chunks of that "
        "stream (its end is one more, in a round too; its prompt one transaction of its "
        "own, before the window). A round writes every stream with text due, so the rounds "
        "per second stay at most one per STREAMING_FLUSH_MIN_INTERVAL however many streams "
        "run, while each answer's chunk writes fall to its sentences or fewer."
    )
    return section
