"""9. Bursts: many prompts arriving at once on one process.

PROMPTS logged-in sockets (a user and a conversation each) are connected to one daphne
process (``LLM_PROVIDER=openai`` on the benchmarks' LLM server, answers of 40 tokens at
40 tokens/s); then every socket sends its prompt at the same moment. First token: from
a socket's sending of its prompt to its first ``token`` frame, p50 and p99 over the
prompts. The process counts its own statements (``BENCH_COUNT_SQL``: every statement of
every thread, and the transactions that write) and its writer's rounds
(``streaming_writes_total``): the write transactions that are not rounds are the
prompts' own, and each prompt must cost exactly one (its two messages, its stream and
the claim together). Every answer is checked against the contract.
"""

# The report is typeset: × for ratios, on purpose.
# ruff: noqa: RUF003

from __future__ import annotations

import asyncio
import json

from asgiref.sync import sync_to_async

from bench import helpers
from bench.clients import drive
from bench.helpers import Context, Goal, Section, Table, median, num, percentile, spread
from bench.invariants import Violations, add_invariants
from bench.token_path import one_run, open_drivers

PROMPTS = 100
#: Prompts sent one after the other on each side, for the CPU a prompt costs: enough
#: that the process's CPU clock (10 ms ticks) reads the echo's to a few per cent.
ONE_AT_A_TIME = 50
#: The issue's goal: the first token's p50, ms.
P50_GOAL_MS = 300.0


def sql_counts(server: helpers.BenchServer) -> dict[str, float]:
    """The process's statement counts (``GET /bench/sql/``) and writer rounds."""
    counted = json.loads(helpers.http_get(server, "/bench/sql/"))
    rounds = helpers.metric(server.metrics(), "streaming_writes_total")
    return {"write_transactions": counted["write_transactions"], "rounds": rounds,
            **{f"{kind}": n for kind, n in counted["kinds"].items()}}  # fmt: skip


async def cpu_per_prompt(
    server: helpers.BenchServer, side: str, clients: list[helpers.Client], violations: Violations
) -> float:
    """Daphne's CPU ms per prompt answered with one token, prompts sent one after the
    other on sockets opened beforehand: what a prompt costs the process besides its
    tokens (its frame, its rows, its request to the LLM server, its end), without a
    burst's queueing."""
    sockets = await open_drivers(server, side, clients, via_llm=True)
    try:
        before = server.cpu_seconds()
        drives = [
            await drive(ws, f"bench pace=1000 tokens=1 one-at-a-time {side} {i}", who=f"{side} {i}")
            for i, ws in enumerate(sockets)
        ]
        spent = server.cpu_seconds() - before
    finally:
        await helpers.close_all(sockets)
    for d in drives:
        d.check.verify(d.expected, tokens=True, chunks=side != "echo")
    violations.add_checks(f"one at a time, {side}", [d.check for d in drives])
    return spent / len(clients) * 1000


async def _measure(
    ctx: Context, server: helpers.BenchServer, llm: helpers.LLMServer, violations: Violations
) -> list[dict[str, float | list[float]]]:
    count = 20 if ctx.quick else PROMPTS
    clients = await sync_to_async(helpers.make_clients)("burst", count)
    singles = await sync_to_async(helpers.make_clients)("one-at-a-time", ONE_AT_A_TIME)
    common = {"server": server, "clients": clients, "llm": llm}
    await one_run(side="driven", streams=2, pace=40, options="tokens=20", tag="warmup",
                  violations=Violations(), **common)  # fmt: skip
    results = []
    for repeat in range(ctx.repeats):
        helpers.log(f"bursts: {count} prompts at once ({repeat + 1})")
        before = await asyncio.to_thread(sql_counts, server)
        async with helpers.cpu_samples(server, every=0.1) as samples:
            run = await one_run(
                side="driven", streams=count, pace=40, options="tokens=40",
                tag=f"burst={repeat}", violations=violations, **common,
            )  # fmt: skip
        after = await asyncio.to_thread(sql_counts, server)
        firsts = [d.first_token * 1000 for d in run.drives if d.arrivals]
        busy = helpers.cpu_share(samples, run.started, run.started + median(firsts) / 1000)
        last = max(firsts) / 1000
        cpu_ms = helpers.cpu_share(samples, run.started, run.started + last) * last * 1000
        echo_cpu = await cpu_per_prompt(server, "echo", singles, violations)
        ours_cpu = await cpu_per_prompt(server, "ours", singles, violations)
        rounds = after["rounds"] - before["rounds"]
        writes = after["write_transactions"] - before["write_transactions"]
        results.append(
            {
                "first": firsts,
                "rounds": rounds,
                "writes": writes,
                "prompts": count,
                "per prompt": (writes - rounds) / count,
                "busy": busy,
                "cpu per prompt": cpu_ms / count,
                "echo cpu": echo_cpu,
                "ours cpu": ours_cpu,
            }
        )
    return results


def run(ctx: Context) -> Section:
    section = Section("bursts", "9. Bursts", __doc__.split("\n\n", 1)[1].strip())
    violations = Violations()
    with helpers.LLMServer() as llm:
        server = helpers.BenchServer(
            helpers.server_env(ctx, llm=llm, BENCH_COUNT_SQL="1"),
            profile=helpers.profile_path(ctx, "daphne"),
        )
        with helpers.running(server, log_dir=ctx.work_dir):
            results = asyncio.run(_measure(ctx, server, llm, violations))
    count = int(results[0]["prompts"])  # type: ignore[arg-type]
    p50 = [percentile(r["first"], 50) for r in results]  # type: ignore[arg-type]
    p99 = [percentile(r["first"], 99) for r in results]  # type: ignore[arg-type]
    per_prompt = [float(r["per prompt"]) for r in results]  # type: ignore[arg-type]
    table = Table(
        f"{count} prompts at once on one process",
        ["first token p50 ms", "first token p99 ms", "write transactions",
         "of which writer rounds", "the prompts' own, per prompt",
         "daphne, % of one core until the p50",
         "daphne CPU ms per prompt until the last first token"],
    )  # fmt: skip
    busy = [float(r["busy"]) for r in results]  # type: ignore[arg-type]
    table.add(
        spread(p50, 1),
        spread(p99, 1),
        spread([float(r["writes"]) for r in results]),  # type: ignore[arg-type]
        spread([float(r["rounds"]) for r in results]),  # type: ignore[arg-type]
        spread(per_prompt, 2),
        spread([b * 100 for b in busy]),
        spread([float(r["cpu per prompt"]) for r in results], 1),  # type: ignore[arg-type]
    )
    section.tables.append(table)
    echo_cpu = [float(r["echo cpu"]) for r in results]  # type: ignore[arg-type]
    ours_cpu = [float(r["ours cpu"]) for r in results]  # type: ignore[arg-type]
    alone = Table(
        f"A prompt's CPU, one at a time ({ONE_AT_A_TIME} prompts a side, answers of one token)",
        ["echo ms per prompt", "ours ms per prompt", "ours ÷ echo",
         f"{count} prompts at ours, s of one core"],
    )  # fmt: skip
    alone.add(
        spread(echo_cpu, 1),
        spread(ours_cpu, 1),
        helpers.ratio(median(ours_cpu), median(echo_cpu), 1),
        num(median(ours_cpu) * count / 1000, 2),
    )
    section.tables.append(alone)
    section.goals += [
        Goal(
            f"first token, {count} prompts at once",
            f"p50 ≤ {P50_GOAL_MS:g} ms",
            f"p50 {num(median(p50), 1)} ms, p99 {num(median(p99), 1)} ms",
            median(p50) <= P50_GOAL_MS,
        ),
        Goal(
            "a prompt's writes",
            "at most one transaction",
            f"{num(median(per_prompt), 2)} write transactions per prompt (besides the "
            "writer's rounds)",
            all(p <= 1.005 for p in per_prompt),
        ),
    ]
    add_invariants(section, violations)
    section.notes.append(
        "Write transactions are counted in the daphne process by a statement wrapper on "
        "every database connection (``bench.counters.StatementCounter``): a transaction "
        "holding at least one INSERT, UPDATE or DELETE, or such a statement in autocommit. "
        "The writer's rounds (one transaction each, however many streams they write, "
        "their ends included) come from ``streaming_writes_total``."
    )
    section.notes.append(
        "Daphne's CPU is read from ``/proc`` every 100 ms, from the sending of the prompts "
        "to their median first token (% of one core) and to the last one (per prompt). "
        "Near 100 % the burst is bound by the process's CPU (one core: Python's lock), not "
        "by a wait: every prompt's work before its first token (its frame, its "
        "transaction through the ORM, its frames back, its request to the LLM server) "
        "queues behind the others', and answers of two tokens wait about as long as "
        "answers of forty. The first-token time falls with that CPU per prompt."
    )
    section.notes.append(
        "One at a time: the same process, sockets opened beforehand, each prompt sent "
        "when the one before had its final status; daphne's CPU clock over all of them, "
        "divided by the prompts. Echo: ``/bench/echo/llm/`` (the prompt's frame, the "
        "provider's request, one token frame, a status frame). Ours: the chat consumer "
        "(the flood counter, the prompt's transaction, the messages' frames and group "
        "message, the drive, the writer's end with its compaction and the message's "
        "Markdown, the status frames). Its last column is the least CPU a burst of that "
        "many prompts needs on one core: answering them in turn instead of together "
        "would at best halve the median first token (measured: worse, since a prompt "
        "waiting on the database then holds up those behind it)."
    )
    return section
