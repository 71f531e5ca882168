"""docs/benchmarks.md from the sections the benchmarks returned, and the machine they ran on."""

# The report is typeset: en dashes for ranges, × for ratios, on purpose.
# ruff: noqa: RUF003

from __future__ import annotations

import contextlib
import datetime
import os
import platform
from importlib import metadata
from pathlib import Path

from bench import history
from bench.helpers import BENCH_REDIS_DB, Context, Section, Table, database_version

HEADER = """\
# Benchmarks

Every performance claim of the project comes from this page, and this page comes from
one command. Do not edit it by hand: run the command again.

## How to run

```console
$ make bench                      # .venv/bin/python -m bench: SQLite + in-memory layer
$ DATABASE_URL=postgres://postgres@127.0.0.1:5432/chatproject \\
  REDIS_URL=redis://127.0.0.1:6379/0 make bench     # PostgreSQL + Redis (the real numbers)
$ .venv/bin/python -m bench --quick                 # smoke test: small sizes, one run each
$ .venv/bin/python -m bench --only tokens fanout    # some sections only
$ .venv/bin/python -m bench --only capacity --profile /tmp/prof   # py-spy of each daphne
$ .venv/bin/python -m bench.profile_summary /tmp/prof/capacity-100-driven.txt   # hot spots
```

`--only` takes one or more of `writes`, `tokens`, `fanout`, `catchup`, `memory`, `purge`,
`provider`, `capacity`, `bursts`, `coldstart`, `bounded`, `sse`.
Only a full run writes `docs/`; `--quick` and `--only` write to
`$TMPDIR/chatproject-bench/` unless given `--output DIR`, so a smoke test never replaces
the committed report.

It measures, each against its baseline in the same run on the same machine, and reports
the ratio:
"""

#: What each section compares, for the how-to-run part of the header.
MEASURED = Table(
    "",
    ["", "ours", "baseline"],
    [
        ["write amplification", "sentence batching, model and the real driver",
         "a write every 200 ms; a write per token"],
        ["driver token path", "driven streams over real websockets (1/10/100)",
         "a raw echo consumer sending the same token frames"],
        ["fanout", "commit → arrival at 1 … 1,000 viewers on two processes",
         "a plain `group_send` of the same payloads"],
        ["catch-up", "stream API, resume, transcript page",
         "5,000 chunks joined; one frame per chunk; 20 messages"],
        ["memory", "RSS per idle viewer and per active stream", "the raw echo consumer"],
        ["purge", "`streams_purge()` of 1,000,000 chunks in batches", "one unbatched DELETE"],
        ["through the real provider", "the `openai` provider on a loopback LLM server, 1/10/100 "
         "streams", "the raw echo fed by the same provider"],
        ["capacity", "streams one daphne carries at 40 tokens/s (p99 within 50 ms)",
         "the provider-fed echo at the same load"],
        ["bursts", "first token of 100 prompts at once; transactions a prompt", "one"],
        ["cold start", "a fresh process's first prompt", "its warm prompts"],
        ["writes stay bounded", "transactions per second at 1 … 300 streams",
         "one round per flush interval"],
        ["Server-Sent Events", "commit → arrival at 1 … 1,000 SSE readers; memory per reader",
         "the same number of websocket viewers"],
    ],
)  # fmt: skip

HOW_TO_RUN_NOTES = """\
While it runs it prints one progress line per step, and after each measurement it writes
`docs/benchmarks.md` (machine, versions, the command, every table as the median of the
repeated runs with the smallest and largest in brackets, and which goals were met) and
the plots `docs/bench-*.png`. A full run takes about 20 minutes on 2 cores (it
depends on the machine's load); `--quick` about 5. A measurement that fails (a database
restarted under it) is run once more after 30 seconds; if it fails again, its section
says why and the command exits with 1. So does a run in which any stream broke the
contract (its text, a gap, a duplicate, a second LLM call, a lost final status): every
section checks every stream it runs, at every load, and a violation is a failure.

- **Your data is safe.** The benchmarks never open the developer's database: without
  `DATABASE_URL` they use a SQLite file in a temporary folder; with a PostgreSQL
  `DATABASE_URL` they create a `bench_<pid>` database on that server, migrate into it and
  drop it at the end. On Redis they use logical database 15 (`BENCH_REDIS_DB`), so their
  channel-layer groups never reach a running dev server; they empty it before and after
  a run (groups of an earlier run would hold dead processes' channels).
- **Settings are the defaults.** `STREAMING_*`, `LLM_*` and `CHAT_*` variables of your
  shell are ignored, so the numbers are those of the documented defaults. The daphne
  processes it starts run with `DEBUG=false` and a pooled PostgreSQL connection, as in
  production, and without the packages only the dev tools bring
  (`bench/production_site/` comes first on their `PYTHONPATH`): with `click` importable,
  autobahn styles a debug line's arguments for every frame it sends, disabled or not,
  about a tenth of a busy server's CPU that a production install does not spend.
- **Fanout needs Redis**: without `REDIS_URL` that section says so and is skipped.
  1,000 sockets need a few thousand open files: the command raises its soft limit
  itself when the hard limit allows (`ulimit -Hn`).
- Benchmarks are not tests: nothing here asserts a timing, and `make test` never runs
  them. Plots need matplotlib: `pip install -e '.[bench]'`.

## This run
"""


def _table(table: Table) -> list[str]:
    lines = [f"**{table.title}**", ""] if table.title else []
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("| " + " | ".join("---" for _ in table.columns) + " |")
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.rows
    ]
    return [*lines, ""]


def _met(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def write(
    ctx: Context, sections: list[Section], *, machine: list[tuple[str, str]], command: str,
    seconds: float,
) -> Path:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [HEADER, *_table(MEASURED), HOW_TO_RUN_NOTES]
    lines += [
        f"Run on {now}, {seconds / 60:.1f} minutes, with:",
        "",
        "```console",
        f"$ {command}",
        "```",
        "",
        "Each cell is the **median over the repeated runs, with the smallest and largest "
        "in brackets**"
        + (" (this was a `--quick` run: small sizes, one run each)." if ctx.quick else ".")
        + f" Runs per measurement: {ctx.repeats}. Every comparison runs both sides in the "
        "same process of this command, on the same machine, one after the other, and its "
        "ratio is ours ÷ baseline. The machine is shared and noisy (2 cores, other work "
        "running): trust ratios more than absolute numbers.",
        "",
        "## Machine",
        "",
        *_table(Table("", ["", ""], [list(row) for row in machine])),
        "## Goals",
        "",
    ]
    goals = Table("", ["measurement", "goal", "measured", "verdict"])
    for section in sections:
        for goal in section.goals:
            goals.add(f"{section.title.split('.')[0]}. {goal.name}", goal.target, goal.result,
                      _met(goal.met))  # fmt: skip
    lines += _table(goals)
    lines += ["## Hot spots fixed while measuring", "", history.INTRO, "", *_table(history.table())]
    for section in sections:
        lines += [f"## {section.title}", "", section.intro, ""]
        for table in section.tables:
            lines += _table(table)
        lines += [f"![{section.title}]({plot})\n" for plot in section.plots]
        lines += [f"- {note}" for note in section.notes]
        lines += ["", f"_Took {section.seconds:.0f} s._", ""]
    path = ctx.docs_dir / "benchmarks.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def redis_version(url: str | None) -> str:
    if not url:
        return "not used (REDIS_URL unset: in-memory channel layer)"
    import redis

    client = redis.Redis.from_url(url)
    try:
        return f"Redis {client.info('server')['redis_version']} (database {BENCH_REDIS_DB})"
    finally:
        client.close()


def machine(ctx: Context) -> list[tuple[str, str]]:
    packages = ["django", "channels", "daphne", "channels-redis", "redis", "psycopg", "twisted"]
    versions = []
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    return [
        ("CPU", f"{_cpu_model()}, {os.cpu_count()} cores"),
        ("Memory", _memory()),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("Packages", ", ".join(versions)),
        ("Database", database_version()),
        ("Channel layer", redis_version(ctx.redis_url)),
        ("Open files limit", str(_nofile())),
    ]


def _nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
