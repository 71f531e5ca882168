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
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.text import prompt_tokens as prompt_tokens
from tests import servers
from tests.servers import DaphneServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Logical Redis database the benchmarks use, so that their channel-layer groups
#: (``chat.conversation.1`` in a fresh database) never reach a developer's server.
BENCH_REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "15"))
#: The bearer token the benchmark daphnes accept on ``GET /metrics``.
METRICS_TOKEN = secrets.token_urlsafe(16)
#: First on the benchmark daphnes' ``PYTHONPATH``: stands in for the dev-only packages
#: a production install lacks, so the servers run what users run (see its ``click``).
PRODUCTION_SITE = ROOT / "bench" / "production_site"


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
    #: With ``--profile DIR``: py-spy records every daphne of the sections named.
    profile_dir: Path | None = None
    profile_sections: frozenset[str] = frozenset()
    profile_format: str = "txt"
    section: str = ""
    #: Product bugs the benchmark daphnes work around: (short name, what and how).

    @property
    def profiling(self) -> bool:
        return self.profile_dir is not None and (
            not self.profile_sections or self.section in self.profile_sections
        )

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


def flush_bench_redis(url: str | None) -> None:
    """Empty the benchmarks' own Redis database: groups of earlier runs (whose
    conversation ids a fresh database reuses) would hold channels of dead processes."""
    if not url:
        return
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def make_user(name: str) -> Any:
    return make_users(name, 1)[0]


def make_users(name: str, count: int) -> list[Any]:
    """``count`` users with no usable password (nobody logs in with one: sessions are
    made directly), in one INSERT."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    model = get_user_model()
    tag = secrets.token_hex(4)
    unusable = make_password(None)
    users = [model(username=f"{name}-{tag}-{i}", password=unusable) for i in range(count)]
    model.objects.bulk_create(users)
    return list(model.objects.filter(username__startswith=f"{name}-{tag}-").order_by("pk"))


@dataclass
class Client:
    """A logged-in user of the benchmarks. One per stream: the flood limit
    (STREAMING_FRAME_BURST) holds per user, as a real crowd's would."""

    user: Any
    cookie: str


def make_clients(name: str, count: int) -> list[Client]:
    """``count`` users, each logged in (a session cookie)."""
    return [Client(user, session_cookie(user)) for user in make_users(name, count)]


def conversations(clients: Sequence[Client]) -> list[int]:
    """A new conversation for each client (a fresh one per run: no history to send)."""
    from chatproject.chat.models import Conversation

    made = Conversation.objects.bulk_create(Conversation(owner=c.user) for c in clients)
    if any(c.pk is None for c in made):  # a database that returns no ids from bulk inserts
        made = list(Conversation.objects.order_by("-pk")[: len(clients)])[::-1]
    return [c.pk for c in made]


def conversation_paths(clients: Sequence[Client]) -> list[str]:
    return [f"/ws/conversations/{pk}/" for pk in conversations(clients)]


# --- daphne servers and websocket clients ----------------------------------------------


def server_env(ctx: Context, llm: LLMServer | None = None, **extra: Any) -> dict[str, str]:
    """The environment of a benchmark daphne: the throwaway database (pooled on
    PostgreSQL, as in production), DEBUG off, no per-owner stream limit, the metrics
    behind the bench's token, and no dev-only packages that change what the server does
    (``PRODUCTION_SITE``); with ``llm``, the ``openai`` provider on that server."""
    settings = dict(
        DATABASE_POOL="true",
        DEBUG="false",
        SECRET_KEY=os.environ["SECRET_KEY"],
        STREAMING_MAX_ACTIVE_PER_OWNER="0",
        STREAMING_METRICS_TOKEN=METRICS_TOKEN,
        LLM_PROVIDER="demo",
    )
    if llm is not None:
        settings.update(
            LLM_PROVIDER="openai", LLM_BASE_URL=llm.base_url, LLM_API_KEY="bench",
            LLM_MODEL="bench-model",
        )  # fmt: skip
    settings.update({key: str(value) for key, value in extra.items()})
    env = servers.server_env(redis_url=ctx.redis_url, llm_base_url=None, **settings)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PRODUCTION_SITE), env.get("PYTHONPATH")]))
    return env


@dataclass
class BenchServer(DaphneServer):
    """A daphne process serving ``bench.echo_asgi`` (the chat app, the echo route and
    the benchmarks' instrumentation) on a free loopback port. With ``profile`` set,
    py-spy samples it for as long as it runs and writes that flamegraph when it stops."""

    app: str = "bench.echo_asgi:application"
    profile: Path | None = None
    profiler: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, log_dir: Path) -> BenchServer:
        super().start(log_dir)
        if self.profile is not None:
            self.profiler = start_profiler(self.pid, self.profile)
        return self

    def stop(self) -> None:
        if self.profiler is not None:
            stop_profiler(self.profiler)
            self.profiler = None
        super().stop()

    def rss_kib(self) -> int:
        """Resident memory of the daphne process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def threads(self) -> int:
        """Threads of the daphne process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise RuntimeError("no Threads")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the daphne process has used so far, from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> dict[str, float]:
        """This process's Prometheus metrics (``GET /metrics`` with the bench's token)."""
        return metrics_text(
            http_get(self, "/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"})
        )


@contextlib.asynccontextmanager
async def cpu_samples(server: BenchServer, every: float = 0.25) -> Any:
    """(time, CPU seconds) of the daphne process every ``every`` seconds while inside."""
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), server.cpu_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
        samples.append((time.monotonic(), server.cpu_seconds()))

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        stop.set()
        await task


def steady_cpu_per_token(
    samples: Sequence[tuple[float, float]], arrivals: Sequence[Sequence[float]]
) -> float:
    """The daphne process's CPU µs per token delivered while every stream was running
    (from the last stream's first token to the first stream's last), NaN when that
    window holds fewer than two samples."""
    streams = [a for a in arrivals if a]
    if not streams:
        return math.nan
    begin, end = max(a[0] for a in streams), min(a[-1] for a in streams)
    inside = [s for s in samples if begin <= s[0] <= end]
    if len(inside) < 2:
        return math.nan
    first, last = inside[0], inside[-1]
    tokens = sum(sum(1 for t in a if first[0] <= t <= last[0]) for a in streams)
    return (last[1] - first[1]) / tokens * 1e6 if tokens else math.nan


def cpu_share(samples: Sequence[tuple[float, float]], begin: float, end: float) -> float:
    """The daphne process's share of one core between ``begin`` and ``end`` (from the
    samples of ``cpu_samples`` inside that window), NaN when it holds fewer than two."""
    inside = [s for s in samples if begin <= s[0] <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return math.nan
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def start_profiler(pid: int, path: Path) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``pid`` into ``path`` (flamegraph .svg, or collapsed stacks for
    .txt) without pausing it; None when py-spy is not installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        log("py-spy is not installed (pip install py-spy): no profile")
        return None
    kind = "raw" if path.suffix == ".txt" else "flamegraph"
    path.parent.mkdir(parents=True, exist_ok=True)
    # --gil: only the thread holding Python's lock, the one resource every thread shares.
    gil = ["--gil"] if os.environ.get("BENCH_PROFILE_GIL", "1") == "1" else []
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--nonblocking", *gil, "--rate",
         os.environ.get("BENCH_PROFILE_RATE", "100"),
         "--format", kind, "--output", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop_profiler(profiler: subprocess.Popen[bytes]) -> None:
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(30)
    except subprocess.TimeoutExpired:
        profiler.kill()


def http_get(server: DaphneServer, path: str, headers: dict[str, str] | None = None) -> bytes:
    """A plain GET (urllib, no proxies)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(server.http_url + path, headers=headers or {})
    with opener.open(request, timeout=60) as response:
        return response.read()


def fetch_stamps(server: DaphneServer) -> tuple[dict[str, list[float]], dict[str, int]]:
    """The instrumented text source's stamps and calls (the server forgets them)."""
    import json

    payload = json.loads(http_get(server, "/bench/stamps/"))
    return payload["stamps"], payload["calls"]


def metrics_text(body: bytes) -> dict[str, float]:
    """Prometheus' text exposition as ``{"name{labels}": value}`` (comments dropped)."""
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def metric(values: dict[str, float], name: str) -> float:
    """A metric summed over its labels (0 when absent)."""
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


@dataclass
class LLMServer:
    """``bench.llm_server`` in a process of its own: an OpenAI-compatible server,
    running while a ``with`` block holds it."""

    process: subprocess.Popen[str] | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LLMServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.llm_server"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        return self

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def stamps(self) -> tuple[dict[str, list[float]], dict[str, int]]:
        """When each token of each prompt was written, and each prompt's request count;
        the server forgets both."""
        import json
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.port}/bench/stamps", timeout=60) as response:
            payload = json.loads(response.read())
        return payload["stamps"], payload["requests"]

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile_path(ctx: Context, name: str) -> Path | None:
    """Where py-spy writes the profile of a daphne of this section, if profiling."""
    if not ctx.profiling:
        return None
    assert ctx.profile_dir is not None
    return ctx.profile_dir / f"{ctx.section}-{name}.{ctx.profile_format}"


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
        origin=server.http_url,
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
