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
    lines = [HEADER.rstrip(), ""]
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
