"""What every benchmark shares: the results' shape, statistics, the benchmarks' text
source, the throwaway database, daphne servers and websocket clients (the counters are
in ``bench.counters``, the machine's description in ``bench.report``). Django is imported
lazily: the throwaway database must exist before settings are read.
"""

# The report is typeset: en dashes for ranges, × for ratios, on purpose.
# ruff: noqa: RUF001, RUF002, RUF003

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tests import servers
from tests.servers import DaphneServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Logical Redis database the benchmarks use, so that their channel-layer groups
#: (``chat.conversation.1`` in a fresh database) never reach a developer's server.
BENCH_REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "15"))


# --- results -------------------------------------------------------------------------


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])


@dataclass
class Goal:
    """A goal of the issue, and whether this run met it (None: not measured here)."""

    name: str
    target: str
    result: str
    met: bool | None


@dataclass
class Section:
    """One measurement's part of docs/benchmarks.md."""

    key: str
    title: str
    intro: str
    tables: list[Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Context:
    """How this run was asked for and what it runs on."""

    quick: bool
    repeats: int
    redis_url: str | None
    work_dir: Path
    docs_dir: Path = DOCS

    @property
    def vendor(self) -> str:
        from django.db import connection

        return connection.vendor

    def sizes(self, full: Sequence[int], quick: Sequence[int]) -> list[int]:
        return list(quick if self.quick else full)


# --- statistics and formatting -------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def num(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def spread(values: Sequence[float], digits: int = 0) -> str:
    """``median (min–max)`` over repeated runs; just the value for a single run."""
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "–"
    middle = num(statistics.median(values), digits)
    if len(values) == 1 or min(values) == max(values):
        return middle
    return f"{middle} ({num(min(values), digits)}–{num(max(values), digits)})"


def median(values: Sequence[float]) -> float:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def ratio(ours: float, baseline: float, digits: int = 2) -> str:
    if not baseline or math.isnan(baseline) or math.isnan(ours):
        return "–"
    return f"{ours / baseline:,.{digits}f}×"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the benchmarks' text source -------------------------------------------------------

_OPTION = re.compile(r"\b(pace|tokens|repeat)=(\d+(?:\.\d+)?)")


def prompt_tokens(prompt: str) -> tuple[float, list[str]]:
    """What a benchmark prompt asks for: the pace (``pace=N`` tokens per second, 0 = as
    fast as possible) and the tokens, the demo answer ``repeat=N`` times over, cut after
    ``tokens=N``. The echo and the instrumented chat both answer with exactly these."""
    from chatproject.llm.demo import demo_answer, tokenize

    options = {key: float(value) for key, value in _OPTION.findall(prompt)}
    tokens = tokenize(demo_answer(prompt)) * int(options.get("repeat", 1))
    if "tokens" in options:
        tokens = tokens[: int(options["tokens"])]
    return options.get("pace", 0.0), tokens


# --- the throwaway database and Django -----------------------------------------------


def bench_redis_url(url: str | None) -> str | None:
    """REDIS_URL with its database index replaced by BENCH_REDIS_DB."""
    if not url:
        return None
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{BENCH_REDIS_DB}"))


@contextlib.contextmanager
def throwaway_database(work_dir: Path) -> Iterator[str]:
    """A database URL of the benchmarks' own: a SQLite file in ``work_dir`` by default,
    or, when DATABASE_URL names a PostgreSQL server, a ``bench_<pid>`` database created
    on that server and dropped afterwards. The developer's database is never opened."""
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        yield f"sqlite:///{work_dir / 'bench.sqlite3'}"
        return
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise SystemExit(f"bench: DATABASE_URL must be PostgreSQL or unset, not {parts.scheme}")
    import psycopg

    name = f"bench_{os.getpid()}"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            for conn in connections.all():
                conn.close()
                if hasattr(conn, "close_pool"):
                    conn.close_pool()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(database_url: str, redis_url: str | None) -> None:
    """Configure chatproject.settings on the throwaway database, production-like
    (DEBUG off), with every streaming setting at its default, and migrate into it."""
    for key in list(os.environ):
        if key.startswith(("STREAMING_", "LLM_", "CHAT_", "CHANNEL_LAYER_")):
            del os.environ[key]
    os.environ.update(
        DJANGO_SETTINGS_MODULE="chatproject.settings",
        DATABASE_URL=database_url,
        DEBUG="false",
        SECRET_KEY=os.environ.get("BENCH_SECRET_KEY") or secrets.token_urlsafe(40),
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("REDIS_URL", None)
    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def make_user(name: str) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(f"{name}-{secrets.token_hex(4)}", password="pw")


# --- daphne servers and websocket clients ----------------------------------------------


def server_env(ctx: Context, **extra: Any) -> dict[str, str]:
    """The environment of a benchmark daphne: the throwaway database (pooled on
    PostgreSQL, as in production), DEBUG off, no per-owner stream limit."""
    settings = dict(
        DATABASE_POOL="true",
        DEBUG="false",
        SECRET_KEY=os.environ["SECRET_KEY"],
        STREAMING_MAX_ACTIVE_PER_OWNER="0",
        LLM_PROVIDER="demo",
    )
    settings.update({key: str(value) for key, value in extra.items()})
    return servers.server_env(redis_url=ctx.redis_url, llm_base_url=None, **settings)


@dataclass
class BenchServer(DaphneServer):
    """A daphne process serving ``bench.echo_asgi`` (the chat app, the echo route and
    the benchmarks' instrumentation) on a free loopback port."""

    app: str = "bench.echo_asgi:application"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_kib(self) -> int:
        """Resident memory of the daphne process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def running(*servers: BenchServer, log_dir: Path) -> Iterator[None]:
    try:
        for server in servers:
            server.start(log_dir)
        yield
    finally:
        for server in servers:
            server.stop()


def session_cookie(user: Any) -> str:
    return servers.session_cookie(user)


async def ws_connect(server: BenchServer, path: str, cookie: str | None = None) -> Any:
    """A real websocket client (``websockets``), as a browser would open it: same Origin
    rules, no message size limit (a browser has none), no proxy."""
    from websockets.asyncio.client import connect

    return await connect(
        server.ws_url + path,
        origin=f"http://localhost:{server.port}",
        additional_headers={"Cookie": cookie} if cookie else {},
        proxy=None,
        open_timeout=60,
        max_size=None,
        max_queue=None,
        ping_interval=None,
    )


async def connect_many(
    count: int, opener: Callable[[int], Awaitable[Any]], concurrency: int = 40
) -> list[Any]:
    """Open ``count`` sockets, at most ``concurrency`` handshakes at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> Any:
        async with gate:
            return await opener(index)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def close_all(sockets: Sequence[Any]) -> None:
    await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)


def database_version() -> str:
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            return f"PostgreSQL {cursor.fetchone()[0]}"
    if connection.vendor == "sqlite":
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version} (file in a temporary directory, WAL)"
    return connection.vendor


def raise_nofile(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="chatproject-bench-"))
