"""1. Write amplification: what persisting an answer costs the database and the channel
layer, for our sentence batching against time-based batching every 200 ms (the naive
design) and a write per token.

The same answers go through all three designs: the demo answer for 50 different
prompts (364 tokens each), at a realistic pace (gaps between tokens drawn from a
log-normal distribution with a median of 25 ms, i.e. 40 tokens/s, seeded). Three
measurements, in one run:

* **Model** (virtual clock, all 50 answers): the ``SentenceBatcher`` with the project's
  defaults (max_chars 2048, max_delay 1.0 s, at most one write per 0.1 s) fed each
  token at its virtual time and flushed when due, exactly as the driver and the process
  writer do for one stream; the 200 ms design writes what arrived in each 200 ms tick;
  the per-token design writes every token. A write is a stream's share of a
  transaction (one transaction for a stream alone; the process writer commits every
  stream's due writes in one round); every design also has the stream's create, claim
  and finish (+3 per answer). Redis messages are the channel layer's
  ``group_send`` calls: one per write, carrying its chunks (so one per token for the
  per-token design, which must broadcast each token), plus the two status frames.
* **Our real driver** (all 50 answers at once, real time, paced as above):
  ``streaming.drive`` on the benchmark database and the configured channel layer,
  with every SQL statement of every thread counted (INSERT/UPDATE/DELETE and write
  transactions), every ``group_send``/``send`` on the layer counted, each stream's
  writes counted where the writer hands them to ``services.chunks_append``, and the
  writer's rounds read from ``streaming_writes_total``. It confirms the model, and shows
  what the model leaves out: streams share rounds.
* **Replay** (the first answers, unpaced, one stream at a time): each design's writes
  replayed through the component's own services (``chunks_append`` and ``stream_end``,
  each in its transaction through ``run_in_db``, as the writer does): statements counted
  and database time measured.
"""

# The report is typeset: en dashes for ranges, × for ratios, on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from bench import counters, helpers
from bench.helpers import Context, Goal, Section, Table, median, num, ratio, spread

MAX_CHARS, MAX_DELAY, MIN_INTERVAL = 2048, 1.0, 0.1  # the project's defaults (streaming.conf)
TICK = 0.2
MEDIAN_GAP, GAP_SIGMA = 0.025, 0.6


@dataclass
class Answer:
    tokens: list[str]
    times: list[float]  # arrival of each token, seconds from the first

    @property
    def sentences(self) -> int:
        from streaming.core.batching import split_batches

        return len(split_batches(self.tokens, max_chars=MAX_CHARS))


def answers(count: int, seed: int = 7) -> list[Answer]:
    from chatproject.llm.demo import demo_answer, tokenize

    rng = random.Random(seed)
    made = []
    for index in range(count):
        tokens = tokenize(demo_answer(f"Question {index}: how is an answer persisted?"))
        times, now = [], 0.0
        for _ in tokens:
            times.append(now)
            now += rng.lognormvariate(math.log(MEDIAN_GAP), GAP_SIGMA)
        made.append(Answer(tokens, times))
    return made


# --- the three designs: each answer → its chunk writes (each a list of chunk texts) ----


@dataclass
class Plan:
    """How a design persists an answer: its chunk writes, then the finish, which writes
    ``tail`` in its own transaction (ours: what was pending when the text ended)."""

    writes: list[list[str]]
    tail: list[str] = field(default_factory=list)


def ours(answer: Answer) -> Plan:
    """The driver's persister on a virtual clock: it wakes when a batch is complete, when
    the buffer's deadline comes, and when the write interval since the last write ends;
    what is left at the end of the text goes with the final status."""
    from streaming.core.batching import SentenceBatcher

    batcher = SentenceBatcher(max_chars=MAX_CHARS, max_delay=MAX_DELAY)
    writes: list[list[str]] = []
    pending: list[str] = []
    next_write_at = 0.0

    def write(now: float) -> None:
        nonlocal pending, next_write_at
        writes.append(pending)
        pending, next_write_at = [], now + MIN_INTERVAL

    def persist_until(until: float) -> None:
        while True:
            wakes = [batcher.deadline, next_write_at if pending else None]
            wake = min((w for w in wakes if w is not None), default=None)
            if wake is None or wake > until:
                return
            if batcher.due(wake):
                pending.append(batcher.flush())
            if pending and wake >= next_write_at:
                write(wake)

    for token, now in zip(answer.tokens, answer.times, strict=True):
        persist_until(now)
        pending.extend(batcher.feed(token, now))
        if pending and now >= next_write_at:
            write(now)
    if tail := batcher.flush():
        pending.append(tail)
    return Plan(writes, pending)


def every_200ms(answer: Answer) -> Plan:
    writes: list[list[str]] = []
    buffered: list[str] = []
    tick = TICK
    for token, now in zip(answer.tokens, answer.times, strict=True):
        while now >= tick:
            if buffered:
                writes.append(["".join(buffered)])
                buffered = []
            tick += TICK
        buffered.append(token)
    if buffered:
        writes.append(["".join(buffered)])
    return Plan(writes)


def per_token(answer: Answer) -> Plan:
    return Plan([[token] for token in answer.tokens])


DESIGNS: dict[str, Callable[[Answer], Plan]] = {
    "sentence batching (ours)": ours,
    "every 200 ms": every_200ms,
    "write per token": per_token,
}


@dataclass
class Cost:
    """Per answer."""

    writes: float
    rows: float
    messages: float


def model(designs_answers: list[Answer]) -> dict[str, list[Cost]]:
    costs: dict[str, list[Cost]] = {}
    for name, design in DESIGNS.items():
        for answer in designs_answers:
            plan = design(answer)
            rows = sum(len(w) for w in plan.writes) + len(plan.tail)
            written = "".join("".join(w) for w in [*plan.writes, plan.tail])
            assert written == "".join(answer.tokens)
            # Create, claim and finish besides the chunk writes; one channel-layer message
            # per write (all its chunks), for the claim's status and for the finish.
            writes = len(plan.writes)
            costs.setdefault(name, []).append(Cost(writes + 3, rows, writes + 2))
    return costs


# --- our real driver ----------------------------------------------------------------------


async def _paced(answer: Answer) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for token, at in zip(answer.tokens, answer.times, strict=True):
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        yield token


def real_driver(batch: list[Answer]) -> dict[str, float]:
    """All answers driven at once through ``streaming.drive``, every statement and
    channel-layer call counted, and each stream's writes counted as the process writer
    hands them to ``services.chunks_append`` (a round writes several streams)."""
    from channels.layers import get_channel_layer
    from prometheus_client import REGISTRY

    import streaming
    from streaming import services

    layer = get_channel_layer()
    appends = [0]
    chunks_append = services.chunks_append

    def counted(*, writes: list) -> dict[str, bool]:
        appends[0] += len(writes)
        return chunks_append(writes=writes)

    def rounds() -> float:
        return REGISTRY.get_sample_value("streaming_writes_total") or 0.0

    services.chunks_append = counted
    try:
        with counters.StatementCounter() as sql, counters.LayerCounter(layer) as sent:
            ids = [streaming.create_stream(group=f"bench.writes.{i}").id for i in range(len(batch))]

            async def drive_all() -> list[streaming.StreamBody]:
                return await asyncio.gather(
                    *(streaming.drive(sid, _paced(a)) for sid, a in zip(ids, batch, strict=True))
                )

            rounds_before = rounds()
            began = time.monotonic()
            bodies = asyncio.run(drive_all())
            seconds = time.monotonic() - began
            writer_rounds = rounds() - rounds_before
    finally:
        services.chunks_append = chunks_append
    for body, answer in zip(bodies, batch, strict=True):
        assert body.text == "".join(answer.tokens), "the driver lost text"
    from streaming.models import Chunk

    n = len(batch)
    return {
        "write transactions": sql.write_transactions / n,
        "stream writes": appends[0] / n + 3,  # create, claim and end besides the appends
        "rounds": writer_rounds,
        "INSERT": sql.kinds["INSERT"] / n,
        "UPDATE": sql.kinds["UPDATE"] / n,
        "SELECT": sql.kinds["SELECT"] / n,
        "chunk rows": Chunk.objects.filter(stream_id__in=ids).count() / n,
        "group_send": sent.group_sends / n,
        "send": sent.sends / n,
        "seconds": seconds,
    }


# --- replay of each design through the services ---------------------------------------


def _append(write: object) -> None:
    from django.db import transaction

    from streaming import services

    with transaction.atomic():
        accepted = services.chunks_append(writes=[write])  # type: ignore[list-item]
    assert all(accepted.values()), accepted


def _end(stream_id: str, first_seq: int, tail: list[tuple[str, str]], written: str) -> object:
    from django.db import transaction

    from streaming import services
    from streaming.core.lifecycle import Status

    with transaction.atomic():
        return services.stream_end(
            stream_id=stream_id,
            status=Status.DONE,
            written={"text": written},
            first_seq=first_seq,
            tail=tail,
        )


def replay(batch: list[Answer]) -> dict[str, dict[str, list[float]]]:
    """Each design's writes, one stream alone, through the services the process writer
    uses (one transaction a write, as the writer's round is for a stream alone)."""
    from channels.layers import get_channel_layer

    from streaming import services
    from streaming.asyncdb import run_in_db
    from streaming.frames import aannounce, chunk_frames, status_frame

    async def persist(plan: Plan) -> None:
        """As the writer does, announcing from the event loop after each commit."""
        stream = await run_in_db(services.stream_create, group="bench.replay")
        stream_id = str(stream.id)
        await run_in_db(services.stream_claim, stream_id=stream_id)
        seq = 0
        for texts in plan.writes:
            batches = [("text", text) for text in texts]
            await run_in_db(_append, services.ChunkWrite(stream_id, seq, batches))
            await aannounce(stream.group, chunk_frames(stream_id, seq, batches))
            seq += len(batches)
        tail = [("text", text) for text in plan.tail]
        written = "".join(text for texts in plan.writes for text in texts)
        finished = await run_in_db(_end, stream_id, seq, tail, written)
        await aannounce(stream.group, [*chunk_frames(stream_id, seq, tail),
                                       status_frame(finished)])  # fmt: skip

    results: dict[str, dict[str, list[float]]] = {}
    layer = get_channel_layer()
    for answer in batch:
        for name, design in DESIGNS.items():
            plan = design(answer)
            with counters.StatementCounter() as sql, counters.LayerCounter(layer) as sent:
                began = time.perf_counter()
                asyncio.run(persist(plan))
                elapsed = time.perf_counter() - began
            row = results.setdefault(name, {})
            row.setdefault("ms", []).append(elapsed * 1000)
            row.setdefault("statements", []).append(sql.writes)
            row.setdefault("transactions", []).append(sql.write_transactions)
            row.setdefault("group_send", []).append(sent.group_sends)
    return results


# --- the section ----------------------------------------------------------------------------


def run(ctx: Context) -> Section:
    section = Section(
        "writes",
        "1. Write amplification",
        __doc__.split("\n\n", 1)[1].strip(),
    )
    count = 10 if ctx.quick else 50
    batch = answers(count)
    tokens = sum(len(a.tokens) for a in batch) / count
    sentences = [a.sentences for a in batch]
    helpers.log(f"writes: model of {count} answers")
    costs = model(batch)

    table = Table(
        f"Model: {count} answers, {num(tokens)} tokens and {num(median(sentences))} sentences "
        "each (median)",
        ["design", "writes / answer", "chunk rows / answer", "Redis msgs / answer",
         "writes / 1k tokens", "Redis msgs / 1k tokens", "writes ÷ ours"],
    )  # fmt: skip
    base = costs["sentence batching (ours)"]
    for name, per_answer in costs.items():
        writes = [c.writes for c in per_answer]
        messages = [c.messages for c in per_answer]
        table.add(
            name,
            spread(writes),
            spread([c.rows for c in per_answer]),
            spread(messages),
            num(median(writes) / tokens * 1000, 1),
            num(median(messages) / tokens * 1000, 1),
            ratio(median(writes), median([c.writes for c in base]), 1),
        )
    section.tables.append(table)

    over = [c.writes - s - 3 for c, s in zip(base, sentences, strict=True)]
    worst = max(over)
    section.goals.append(
        Goal(
            "writes per answer (model)",
            "≤ sentences + 3",
            f"sentences + 3 + {num(median(over))} (median), + {num(worst)} (worst answer); "
            f"{sum(1 for o in over if o > 0)} of {count} answers over",
            worst <= 0,
        )
    )

    helpers.log(f"writes: our real driver, {count} answers at once")
    real = real_driver(batch)
    measured = Table(
        f"Our real driver ({helpers.database_version().split(' (')[0]}, "
        f"{'Redis' if ctx.redis_url else 'in-memory'} layer): per answer, measured vs model",
        ["", "measured", "model"],
    )
    model_writes = median([c.writes for c in base])
    measured.add("writes of a stream (its share of the writer's rounds, + create, claim, end)",
                 num(real["stream writes"], 1), num(model_writes, 1))  # fmt: skip
    measured.add("write transactions (the writer's rounds are shared)",
                 num(real["write transactions"], 1), "–")  # fmt: skip
    measured.add(f"writer rounds for all {count} answers (streaming_writes_total)",
                 num(real["rounds"]), "–")  # fmt: skip
    measured.add("chunk rows", num(real["chunk rows"], 1), num(median([c.rows for c in base]), 1))
    measured.add("group_send (Redis messages)", num(real["group_send"], 1),
                 num(median([c.messages for c in base]), 1))  # fmt: skip
    measured.add("other layer sends", num(real["send"], 1), "–")
    measured.add("INSERT statements", num(real["INSERT"], 1), "–")
    measured.add("UPDATE statements", num(real["UPDATE"], 1), "–")
    measured.add("SELECT statements", num(real["SELECT"], 1), "–")
    measured.add(f"wall time for all {count} (s)", num(real["seconds"], 1),
                 num(max(a.times[-1] for a in batch), 1))  # fmt: skip
    section.tables.append(measured)
    real_over = real["stream writes"] - median(sentences) - 3
    section.goals.append(
        Goal(
            "writes per answer (real driver)",
            "≤ sentences + 3",
            f"sentences + 3 {'+' if real_over >= 0 else '−'} {num(abs(real_over), 1)} "
            "(mean per answer)",
            real_over <= 0,
        )
    )
    per_token_messages = real["group_send"] / tokens
    section.goals.append(
        Goal(
            "no Redis message per token",
            "messages only per batch and status",
            f"{num(per_token_messages, 3)} group_send per token "
            f"({num(real['group_send'], 1)} per answer of {num(tokens)} tokens)",
            real["group_send"] <= real["chunk rows"] + 2,
        )
    )

    replayed = min(len(batch), 3 if ctx.quick else 10)
    helpers.log(f"writes: replay of {replayed} answers through the services")
    cost = replay(batch[:replayed])
    timing = Table(
        f"Replay through the services: {replayed} answers, per answer",
        ["design", "write statements", "write transactions", "group_send", "DB time ms",
         "DB time ÷ ours"],
    )  # fmt: skip
    ours_ms = median(cost["sentence batching (ours)"]["ms"])
    for name, row in cost.items():
        timing.add(
            name,
            spread(row["statements"]),
            spread(row["transactions"]),
            spread(row["group_send"]),
            spread(row["ms"], 1),
            ratio(median(row["ms"]), ours_ms, 1),
        )
    section.tables.append(timing)
    section.notes.append(
        "Writes in the model are transactions; each chunk write is one conditional UPDATE of "
        "the stream (seq and lease) plus one INSERT of its chunk rows. Create, claim and "
        "finish are the +3; ours writes its last chunks in the finish's transaction. The "
        "time fallback (max_delay 1 s) cuts a sentence that takes longer than a second to "
        "arrive (the long list items and the code block of the demo answer) into two "
        "writes, by design: text without boundaries still flows."
    )
    section.plots.append(_plot(ctx, costs))
    return section


def _plot(ctx: Context, costs: dict[str, list[Cost]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = "bench-writes.png"
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    metrics = (("DB writes", "writes"), ("chunk rows", "rows"), ("Redis messages", "messages"))
    width = 0.26
    for index, (design, per_answer) in enumerate(costs.items()):
        values = [median([getattr(c, attr) for c in per_answer]) for _, attr in metrics]
        xs = [m + (index - 1) * width for m in range(len(metrics))]
        bars = ax.bar(xs, values, width, label=design)
        ax.bar_label(bars, [f"{v:.0f}" for v in values], fontsize=7)
    ax.set_xticks(range(len(metrics)), [label for label, _ in metrics])
    ax.set_yscale("log")
    ax.set_ylabel("per answer (log scale)")
    ax.set_title("Persisting one 364-token answer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.docs_dir / name, dpi=110)
    plt.close(fig)
    return name
