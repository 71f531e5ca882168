"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks, write the report.

On the embedded defaults (SQLite, in-memory channel layer) by default; with DATABASE_URL
(PostgreSQL) and REDIS_URL set, on those servers: a ``bench_<pid>`` database is created
there and dropped at the end, and Redis database BENCH_REDIS_DB (15) is used.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback

from bench import helpers, report

#: name → module; each module has ``run(ctx) -> Section``.
BENCHMARKS = {
    "writes": "bench.write_amplification",
    "tokens": "bench.token_path",
    "fanout": "bench.fanout",
    "catchup": "bench.catchup",
    "memory": "bench.memory",
    "purge": "bench.purge",
    "provider": "bench.provider",
    "capacity": "bench.capacity",
    "bursts": "bench.bursts",
    "coldstart": "bench.cold_start",
    "bounded": "bench.bounded_writes",
    "sse": "bench.sse",
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--repeats", type=int, help="repeated runs (default 3; --quick: 1)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record each daphne with py-spy into DIR (flamegraphs; needs py-spy)",
    )
    parser.add_argument(
        "--profile-format",
        choices=["txt", "svg"],
        default="txt",
        help="collapsed stacks (for python -m bench.profile_summary) or flamegraphs",
    )
    parser.add_argument(
        "--profile-only",
        nargs="+",
        choices=sorted(BENCHMARKS),
        help="with --profile: only the daphnes of these sections",
    )
    parser.add_argument(
        "--output",
        help="folder for benchmarks.md and the plots (default: docs/ for a full run; a "
        "temporary folder for --quick or --only, so a smoke test never replaces the report)",
    )
    return parser.parse_args(argv)


def output_dir(args: argparse.Namespace) -> helpers.Path:
    if args.output:
        return helpers.Path(args.output)
    if args.quick or args.only:
        return helpers.Path(tempfile.gettempdir()) / "chatproject-bench"
    return helpers.DOCS


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    repeats = args.repeats or (1 if args.quick else 3)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    env_note = " ".join(
        f"{name}={os.environ[name]}"
        for name in ("DATABASE_URL", "REDIS_URL")
        if os.environ.get(name)
    )
    helpers.raise_nofile(8192)
    work_dir = helpers.work_dir()
    redis_url = helpers.bench_redis_url(os.environ.get("REDIS_URL"))
    started = time.monotonic()
    try:
        with helpers.throwaway_database(work_dir) as database_url:
            helpers.setup_django(database_url, redis_url)
            ctx = helpers.Context(
                quick=args.quick,
                repeats=repeats,
                redis_url=redis_url,
                work_dir=work_dir,
                docs_dir=output_dir(args),
                profile_dir=helpers.Path(args.profile).resolve() if args.profile else None,
                profile_sections=frozenset(args.profile_only or ()),
                profile_format=args.profile_format,
            )
            ctx.docs_dir.mkdir(parents=True, exist_ok=True)
            helpers.flush_bench_redis(redis_url)
            machine = report.machine(ctx)
            load_before = report.load_average()
            sections = []
            failed = 0
            for name in args.only or list(BENCHMARKS):
                helpers.log(f"{name}: starting")
                ctx.section = name
                began = time.monotonic()
                try:
                    section = run_once_or_twice(name, ctx)
                except Exception as exc:  # one broken measurement must not lose the others
                    traceback.print_exc()
                    section = failed_section(name, exc)
                    failed += 1
                section.seconds = time.monotonic() - began
                if any(
                    goal.name.startswith("contract invariants") and goal.met is False
                    for goal in section.goals
                ):
                    failed += 1  # a regression is a bug, not a slower number
                helpers.log(f"{name}: done in {section.seconds:.0f} s")
                sections.append(section)
                load = f"{load_before} before, {report.load_average()} after"
                path = report.write(
                    ctx,
                    sections,
                    machine=[*machine, ("Load average (1/5/15 min)", load)],
                    command=f"{env_note} {command}".strip(),
                    seconds=time.monotonic() - started,
                )
            helpers.log(f"wrote {path}")
    finally:
        helpers.flush_bench_redis(redis_url)
        if not os.environ.get("BENCH_KEEP_WORK_DIR"):
            shutil.rmtree(work_dir, ignore_errors=True)
    return 1 if failed else 0


def run_once_or_twice(name: str, ctx: helpers.Context) -> helpers.Section:
    """Run a benchmark; after a failure (a service restarted under it, on a shared
    machine), wait and run it once more."""
    module = importlib.import_module(BENCHMARKS[name])
    try:
        return module.run(ctx)
    except Exception:
        traceback.print_exc()
        helpers.log(f"{name}: failed; running it again in 30 s")
        time.sleep(30)
        drop_connections()
        return module.run(ctx)


def drop_connections() -> None:
    """Forget every database connection of this process, dead ones included (a restarted
    server leaves them in the pool, in this thread and in asgiref's sync thread)."""
    import contextlib

    from asgiref.sync import SyncToAsync
    from django.db import connections

    def drop() -> None:
        for conn in connections.all():
            with contextlib.suppress(Exception):
                conn.close()
            with contextlib.suppress(Exception):
                if getattr(conn, "pool", None) is not None:
                    conn.close_pool()

    drop()
    with contextlib.suppress(Exception):
        SyncToAsync.single_thread_executor.submit(drop).result(timeout=10)


def failed_section(name: str, exc: Exception) -> helpers.Section:
    module = importlib.import_module(BENCHMARKS[name])
    title = {"writes": "1. Write amplification", "tokens": "2. Driver token path",
             "fanout": "3. Fanout over Redis", "catchup": "4. Catch-up", "memory": "5. Memory",
             "purge": "6. Purge", "provider": "7. Through the real provider",
             "capacity": "8. Capacity", "bursts": "9. Bursts", "coldstart": "10. Cold start",
             "bounded": "11. Writes stay bounded", "sse": "12. Server-Sent Events",
             }.get(name, name)  # fmt: skip
    section = helpers.Section(name, title, (module.__doc__ or "").split("\n\n", 1)[-1].strip())
    section.notes.append(f"This measurement failed in this run: {type(exc).__name__}: {exc}")
    section.goals.append(helpers.Goal("the measurement", "runs", "failed", False))
    return section


if __name__ == "__main__":
    raise SystemExit(main())
