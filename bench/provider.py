"""7. Through the real provider: the ``openai`` provider reading an OpenAI-compatible
server as fast as it streams, our stack against the raw websocket echo fed the same way.

The LLM server (``bench.llm_server``) is a process of its own on loopback, streaming
the demo answer one ``chat.completion.chunk`` event per token, as fast as the socket
takes them. One daphne process (``LLM_PROVIDER=openai`` pointed at it) serves both
sides. Ours: a logged-in socket per stream (a user each) sends a ``prompt`` to the chat
consumer, which stores it, claims the stream, and drives the provider's deltas to the
socket as ``token`` frames while the writer persists and announces the chunks. Echo: a
socket per stream sends the same prompt to ``/bench/echo/llm/``, whose consumer calls
the same provider the same way and sends each delta as the same ``token`` frame, and
nothing else: the provider's cost is on both sides, and the ratio is what our stack
keeps of it.

Throughput is the tokens delivered to every driver socket together, from the sending
of the prompts to the last token, with 1, 10 and 100 concurrent streams (the demo
answer three times over, 1,092 tokens a stream; once, 364 tokens, with 100 streams).
The daphne process's CPU time per token delivered comes from ``/proc``. Every stream
is checked against the contract (tokens, chunks, database and final status exactly the
text the server sent; one request to the LLM server per prompt).
"""

# The report is typeset: × for ratios, on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async

from bench import helpers
from bench.helpers import Context, Goal, Section, Table, median, num, ratio, spread
from bench.invariants import Violations, add_invariants
from bench.token_path import Run, one_run

#: The issue's goals: ours ÷ echo at each number of streams.
GOALS = {1: 0.5, 10: 0.3, 100: 0.2}
REPEAT = 3


async def _measure(
    ctx: Context, server: helpers.BenchServer, llm: helpers.LLMServer, violations: Violations
) -> dict[tuple[str, int], list[tuple[Run, float]]]:
    sizes = ctx.sizes(list(GOALS), [1, 10])
    clients = await sync_to_async(helpers.make_clients)("provider", max(sizes))
    common = {"server": server, "clients": clients, "violations": violations, "llm": llm}
    for side in ("echo", "driven"):  # warm-up: the provider's session, imports, caches
        await one_run(side=side, streams=2, pace=0, options="", tag="warmup", **common)
    runs: dict[tuple[str, int], list[tuple[Run, float]]] = {}
    for repeat in range(ctx.repeats):
        for streams in sizes:
            options = f"repeat={REPEAT if streams < 100 else 1}"
            for side in ("echo", "driven"):
                helpers.log(f"provider: {side}, {streams} streams ({repeat + 1})")
                cpu = server.cpu_seconds()
                run = await one_run(
                    side=side, streams=streams, pace=0, options=options,
                    tag=f"provider={repeat}-{streams}-{side}", **common,
                )  # fmt: skip
                runs.setdefault((side, streams), []).append((run, server.cpu_seconds() - cpu))
    return runs


def run(ctx: Context) -> Section:
    section = Section(
        "provider", "7. Through the real provider", __doc__.split("\n\n", 1)[1].strip()
    )
    violations = Violations()
    with helpers.LLMServer() as llm:
        server = helpers.BenchServer(
            helpers.server_env(ctx, llm=llm), profile=helpers.profile_path(ctx, "daphne")
        )
        with helpers.running(server, log_dir=ctx.work_dir):
            runs = asyncio.run(_measure(ctx, server, llm, violations))
    sizes = sorted({streams for _, streams in runs})
    table = Table(
        "As fast as the LLM server streams: tokens/s delivered (all streams together)",
        ["streams", "raw echo tok/s", "ours tok/s", "ours ÷ echo", "goal",
         "steady: echo / ours", "first token: echo / ours ms",
         "daphne CPU µs per token: echo / ours"],
    )  # fmt: skip
    for streams in sizes:
        echo, ours = runs[("echo", streams)], runs[("driven", streams)]
        e_tps = [r.throughput for r, _ in echo]
        o_tps = [r.throughput for r, _ in ours]
        e_cpu = [cpu / sum(len(a) for a in r.arrivals) * 1e6 for r, cpu in echo]
        o_cpu = [cpu / sum(len(a) for a in r.arrivals) * 1e6 for r, cpu in ours]
        measured = median(o_tps) / median(e_tps)
        table.add(
            streams,
            spread(e_tps),
            spread(o_tps),
            ratio(median(o_tps), median(e_tps)),
            f"≥ {GOALS.get(streams, 0):g}×",
            f"{num(median([r.steady for r, _ in echo]))} / "
            f"{num(median([r.steady for r, _ in ours]))}",
            f"{num(median([median(r.first_token) * 1000 for r, _ in echo]), 1)} / "
            f"{num(median([median(r.first_token) * 1000 for r, _ in ours]), 1)}",
            f"{num(median(e_cpu))} / {num(median(o_cpu))}",
        )
        if streams in GOALS:
            section.goals.append(
                Goal(
                    f"provider throughput at {streams} stream(s)",
                    f"≥ {GOALS[streams]:g} × raw echo",
                    f"{measured:.2f}× ({num(median(o_tps))} vs {num(median(e_tps))} tok/s)",
                    measured >= GOALS[streams],
                )
            )
    section.tables.append(table)
    add_invariants(section, violations)
    section.notes.append(
        "Steady: tokens per second from the moment every stream had its first token to the "
        "moment the first one ended. First token: from sending the prompt, so ours includes "
        "storing the prompt and its answer and claiming the stream (one transaction). "
        "CPU: the daphne process's user and system time over the run, divided by the "
        "tokens delivered (the provider's parsing is in both)."
    )
    return section
