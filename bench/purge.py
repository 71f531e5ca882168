"""6. Purge: deleting a million chunks in batches, against one unbatched DELETE.

1,000 final streams finished two hours ago (past STREAMING_CHUNK_RETENTION, 1 hour)
with 1,000 chunks of 100 characters each are inserted (``COPY`` on PostgreSQL, one
``executemany`` on SQLite) and analysed. Then ``streaming.housekeeping.streams_purge()``
runs with the default STREAMING_PURGE_BATCH_SIZE (5,000) and every statement is timed.
Baseline: the same rows inserted again and removed by one ``.delete()`` of the same
chunks (a single DELETE statement). The longest single statement is what bounds how
long the purge holds locks on the chunk table.
"""

# The report is typeset: en dashes for ranges, × for ratios, on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

from bench import counters, helpers
from bench.helpers import Context, Goal, Section, Table, median, num, ratio, spread

PER_STREAM = 1000
TEXT = ("The purge removes chunks of final streams; the stream row keeps the text. " * 2)[:100]


def _fill(total: int) -> None:
    from django.db import connection, transaction
    from django.utils import timezone

    from streaming.models import Chunk, Stream

    now = timezone.now()
    finished = now - timedelta(hours=2)
    streams = [
        Stream(
            id=uuid.uuid4(),
            group="bench.purge",
            status="done",
            lease_expires_at=finished,
            finished_at=finished,
            last_seq=PER_STREAM - 1,
        )
        for _ in range(max(1, total // PER_STREAM))
    ]
    Stream.objects.bulk_create(streams, batch_size=1000)
    table = Chunk._meta.db_table
    rows = ((s.id, seq, "text", TEXT, now) for s in streams for seq in range(PER_STREAM))
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            columns = "(stream_id, seq, part, text, created_at)"
            with cursor.cursor.copy(f"COPY {table} {columns} FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cursor.executemany(
                f"INSERT INTO {table} (stream_id, seq, part, text, created_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                [
                    (s.hex, seq, part, text, connection.ops.adapt_datetimefield_value(created))
                    for s, seq, part, text, created in rows
                ],
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _clear() -> None:
    from django.db import connection

    from streaming.models import Chunk, Stream

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {Chunk._meta.db_table}")
        else:
            cursor.execute(f"DELETE FROM {Chunk._meta.db_table}")
    Stream.objects.filter(group="bench.purge").delete()


def ours() -> dict[str, Any]:
    from streaming.housekeeping import streams_purge

    with counters.StatementCounter(keep_durations=True) as sql:
        began = time.perf_counter()
        removed = streams_purge()
        seconds = time.perf_counter() - began
    deletes = [d for kind, d in sql.durations if kind == "DELETE"]
    return {
        "seconds": seconds,
        "longest": max(d for _, d in sql.durations),
        "statements": sql.total,
        "batches": len(deletes),
        "removed": removed.chunks,
        "durations": sql.durations,
    }


def unbatched() -> dict[str, Any]:
    from django.utils import timezone

    from streaming.housekeeping import FINAL_STATUSES
    from streaming.models import Chunk

    chunks = Chunk.objects.filter(
        stream__status__in=FINAL_STATUSES,
        stream__finished_at__lt=timezone.now() - timedelta(hours=1),
    )
    with counters.StatementCounter(keep_durations=True) as sql:
        began = time.perf_counter()
        removed, _ = chunks.delete()
        seconds = time.perf_counter() - began
    return {
        "seconds": seconds,
        "longest": max(d for _, d in sql.durations),
        "statements": sql.total,
        "removed": removed,
    }


def run(ctx: Context) -> Section:
    section = Section("purge", "6. Purge", __doc__.split("\n\n", 1)[1].strip())
    from streaming.conf import app_settings

    total = 50_000 if ctx.quick else 1_000_000
    repeats = min(ctx.repeats, 2)
    mine, theirs = [], []
    _clear()
    for repeat in range(repeats):
        helpers.log(f"purge: inserting {total:,} chunks ({repeat + 1})")
        _fill(total)
        helpers.log("purge: streams_purge()")
        mine.append(ours())
        assert mine[-1]["removed"] == total, mine[-1]["removed"]
        _clear()
        helpers.log(f"purge: inserting {total:,} chunks again, one DELETE")
        _fill(total)
        theirs.append(unbatched())
        _clear()
    vendor = helpers.database_version().split(" (")[0]
    table = Table(
        f"{total:,} chunks on {vendor}, batch size {app_settings.PURGE_BATCH_SIZE:,}",
        ["", "streams_purge (batched)", "one DELETE", "batched ÷ one"],
    )

    def row(label: str, key: str, scale: float = 1.0, digits: int = 2) -> None:
        a, b = [m[key] * scale for m in mine], [t[key] * scale for t in theirs]
        table.add(label, spread(a, digits), spread(b, digits), ratio(median(a), median(b)))

    row("total time, s", "seconds")
    row("longest single statement, ms", "longest", 1000, 1)
    row("statements", "statements", 1, 0)
    table.add("chunks per second", spread([total / m["seconds"] for m in mine]),
              spread([total / t["seconds"] for t in theirs]), "–")  # fmt: skip
    section.tables.append(table)
    longest = median([m["longest"] for m in mine]) * 1000
    section.goals.append(
        Goal(
            f"purge {total:,} chunks",
            "bounded statements (batch size), total time reported",
            f"{num(median([m['seconds'] for m in mine]), 1)} s, longest statement "
            f"{num(longest, 1)} ms (one DELETE: "
            f"{num(median([t['longest'] for t in theirs]) * 1000, 1)} ms)",
            longest < median([t["longest"] for t in theirs]) * 1000,
        )
    )
    if ctx.vendor != "postgresql":
        section.notes.append(
            "This run is on SQLite: the issue asks for PostgreSQL, run with DATABASE_URL set."
        )
    section.plots.append(_plot(ctx, mine[0]["durations"], total))
    return section


def _plot(ctx: Context, durations: list[tuple[str, float]], total: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = "bench-purge.png"
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for kind, label in (("SELECT", "pick (SELECT … FOR UPDATE)"), ("DELETE", "DELETE")):
        ax.plot([d * 1000 for k, d in durations if k == kind], ".", label=label)
    ax.set_xlabel("batch")
    ax.set_ylabel("statement, ms")
    ax.set_title(f"streams_purge of {total:,} chunks: each statement")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.docs_dir / name, dpi=110)
    plt.close(fig)
    return name
