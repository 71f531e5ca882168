"""10. Cold start: a fresh daphne process's first prompt against its later ones.

Each sample starts a new daphne process (``LLM_PROVIDER=openai`` on the benchmarks' LLM
server) and, as soon as it listens, opens a logged-in socket and sends a prompt: the
process's first socket and first answer. Then, on the same process, WARM more prompts,
one after the other, each on a socket of its own (a new conversation, as the first).
Time to first token: from sending the prompt to the first ``token`` frame at the
client (the goal's measure); the process's own view, from the start of the drive to the
provider's first delta, is ``streaming_time_to_first_token_seconds`` (its sum after the
first prompt is that prompt's). The socket's handshake is timed apart.
"""

# The report is typeset: en dashes for ranges, × for ratios, on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async

from bench import helpers
from bench.clients import drive
from bench.helpers import Context, Goal, Section, Table, median, num, spread
from bench.invariants import Violations, add_invariants, database_check

WARM = 5
#: The issue's bound: the first prompt's first token at most this much later, ms.
BOUND_MS = 50.0
PROMPT = "bench pace=40 tokens=40"


@dataclass
class Sample:
    connect_ms: list[float] = field(default_factory=list)  # first, then the warm ones
    first_token_ms: list[float] = field(default_factory=list)
    server_first_ms: float = 0.0  # the process's TTFT metric for the first prompt
    server_warm_ms: float = 0.0  # its mean over the warm prompts


async def _prompt(
    server: helpers.BenchServer, client: helpers.Client, tag: str, violations: Violations
) -> tuple[float, float, str]:
    """One socket, one prompt: handshake ms, first token ms, the prompt."""
    loop = asyncio.get_running_loop()
    path = (await sync_to_async(helpers.conversation_paths)([client]))[0]
    began = loop.time()
    ws = await helpers.ws_connect(server, path, client.cookie)
    connected = loop.time()
    try:
        prompt = f"{PROMPT} {tag}"
        run = await drive(ws, prompt, who=tag)
    finally:
        await ws.close()
    run.check.verify(run.expected, tokens=True)
    violations.add_checks(tag, [run.check])
    for stream_id, problem in await sync_to_async(database_check)({run.stream_id: run.expected}):
        violations.add(f"{tag}, stream {stream_id}", [problem])
    return (connected - began) * 1000, run.first_token * 1000, prompt


async def _sample(
    ctx: Context, index: int, llm: helpers.LLMServer, clients: list[helpers.Client],
    violations: Violations,
) -> Sample:  # fmt: skip
    server = helpers.BenchServer(
        helpers.server_env(ctx, llm=llm), profile=helpers.profile_path(ctx, f"{index}")
    )
    sample = Sample()
    prompts = []
    server.start(ctx.work_dir)
    try:
        for n in range(WARM + 1):
            connect, first, prompt = await _prompt(
                server, clients[n], f"cold={index} prompt={n}", violations
            )
            sample.connect_ms.append(connect)
            sample.first_token_ms.append(first)
            prompts.append(prompt)
            if n == 0:
                first_metrics = await asyncio.to_thread(server.metrics)
        metrics = await asyncio.to_thread(server.metrics)
    finally:
        server.stop()
    name = "streaming_time_to_first_token_seconds"
    first_sum = helpers.metric(first_metrics, f"{name}_sum")
    sample.server_first_ms = first_sum * 1000
    warm_count = helpers.metric(metrics, f"{name}_count") - 1
    if warm_count > 0:
        sample.server_warm_ms = (helpers.metric(metrics, f"{name}_sum") - first_sum) / warm_count
        sample.server_warm_ms *= 1000
    _, calls = await asyncio.to_thread(llm.stamps)
    violations.llm_calls(f"cold start {index}", calls, prompts)
    return sample


async def _measure(ctx: Context, llm: helpers.LLMServer, violations: Violations) -> list[Sample]:
    clients = await sync_to_async(helpers.make_clients)("cold", WARM + 1)
    samples = []
    for index in range(2 if ctx.quick else 5):
        helpers.log(f"cold start: fresh daphne {index + 1}")
        samples.append(await _sample(ctx, index, llm, clients, violations))
    return samples


def run(ctx: Context) -> Section:
    section = Section("coldstart", "10. Cold start", __doc__.split("\n\n", 1)[1].strip())
    violations = Violations()
    with helpers.LLMServer() as llm:
        samples = asyncio.run(_measure(ctx, llm, violations))
    first = [s.first_token_ms[0] for s in samples]
    warm = [median(s.first_token_ms[1:]) for s in samples]
    table = Table(
        f"A fresh process's first prompt against its next {WARM} ({len(samples)} processes; ms)",
        ["", "first prompt", "warm prompts (median)", "first − warm"],
    )
    table.add("time to first token, at the client", spread(first, 1), spread(warm, 1),
              num(median(first) - median(warm), 1))  # fmt: skip
    server_first = [s.server_first_ms for s in samples]
    server_warm = [s.server_warm_ms for s in samples]
    table.add("drive start → provider's first delta, in the process (metric)",
              spread(server_first, 1), spread(server_warm, 1),
              num(median(server_first) - median(server_warm), 1))  # fmt: skip
    connect_first = [s.connect_ms[0] for s in samples]
    connect_warm = [median(s.connect_ms[1:]) for s in samples]
    table.add("websocket handshake", spread(connect_first, 1), spread(connect_warm, 1),
              num(median(connect_first) - median(connect_warm), 1))  # fmt: skip
    section.tables.append(table)
    added = median(first) - median(warm)
    section.goals.append(
        Goal(
            "a fresh process's first prompt",
            f"first token within {BOUND_MS:g} ms of a warm prompt's",
            f"{num(median(first), 1)} ms vs {num(median(warm), 1)} ms (+{num(added, 1)} ms)",
            added <= BOUND_MS,
        )
    )
    add_invariants(section, violations)
    return section
