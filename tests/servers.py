"""Real servers for integration tests: daphne processes on loopback that share the test
database (and Redis, when given), and logged-in clients for them.

The test database must be visible to other processes, so SQLite runs use a file (see
``django_db_modify_db_settings`` in conftest) and every test that starts a server is
``django_db(transaction=True)``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """A URL for the database the tests are using right now (the test database)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


@dataclass
class DaphneServer:
    """One daphne process serving ``app`` (chatproject.asgi) on a free loopback port."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    app: str = "chatproject.asgi:application"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> DaphneServer:
        self.log_path = log_dir / f"daphne-{self.port}.log"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "--application-close-timeout",
                "5",
                self.app,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"daphne did not listen within 30 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """kill -9: the process dies mid-whatever, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def server_env(
    *,
    redis_url: str | None,
    llm_base_url: str | None = None,
    settings_module: str = "chatproject.settings",
    **extra: Any,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMING_", "LLM_"))}
    env.update(
        DJANGO_SETTINGS_MODULE=settings_module,
        DATABASE_URL=database_url(),
        DATABASE_POOL="false",
        PYTHONUNBUFFERED="1",
        LLM_DEMO_TOKENS_PER_SECOND="0",
    )
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    if llm_base_url:
        env.update(LLM_PROVIDER="openai", LLM_BASE_URL=llm_base_url, LLM_API_KEY="test")
    env.update({key: str(value) for key, value in extra.items()})
    return env


def session_cookie(user: Any) -> str:
    """A session for ``user`` in the shared database, as a Cookie header value."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


FINAL_STATUSES = frozenset({"done", "error", "cancelled", "timeout"})


class StreamView:
    """A client's view of one stream, built from frames exactly as the contract says:
    a snapshot replaces both parts, a chunk must be the next seq and adds to its part,
    a final status is verifiable for the text and for the reasoning."""

    def __init__(self) -> None:
        self.text = ""
        self.reasoning = ""
        self.last_seq = -1
        self.tokens = ""  # the driver's answer tokens
        self.reasoning_tokens = ""  # and its reasoning tokens
        self.final: dict[str, Any] | None = None

    def add(self, part: str, text: str) -> None:
        """A chunk's text, to the part it belongs to."""
        assert part in ("text", "reasoning"), part
        if part == "text":
            self.text += text
        else:
            self.reasoning += text

    def apply(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "token":
            if frame["part"] == "reasoning":
                self.reasoning_tokens += frame["text"]
            else:
                self.tokens += frame["text"]
        elif kind == "snapshot":
            self.text, self.reasoning = frame["text"], frame["reasoning"]
            self.last_seq = frame["last_seq"]
        elif kind == "chunk":
            assert frame["seq"] == self.last_seq + 1, (frame["seq"], self.last_seq)
            self.add(frame["part"], frame["text"])
            self.last_seq = frame["seq"]
        elif kind == "status" and frame["status"] in FINAL_STATUSES:
            self.final = frame

    def verified(self) -> bool:
        import hashlib

        def digest(text: str) -> tuple[int, str]:
            return len(text), hashlib.sha256(text.encode()).hexdigest()

        final = self.final
        assert final is not None
        return (
            (final["length"], final["sha256"]) == digest(self.text)
            and (final["reasoning_length"], final["reasoning_sha256"]) == digest(self.reasoning)
            and final["last_seq"] == self.last_seq
        )


class WsClient:
    """A real websocket client (the ``websockets`` library) over TCP to a daphne server."""

    def __init__(
        self, server: DaphneServer, path: str, cookie: str | None, origin: str | None = None
    ) -> None:
        self.server, self.path, self.cookie = server, path, cookie
        # A page of the site itself, as the Origin check requires, unless a test says.
        self.origin = origin or server.http_url
        self.connection: Any = None
        self.frames: list[dict[str, Any]] = []
        self.streams: dict[str, StreamView] = {}
        self.waiting: list[tuple[Any, asyncio.Future[None]]] = []

    async def connect(self) -> WsClient:
        from websockets.asyncio.client import connect

        headers = {"Cookie": self.cookie} if self.cookie else {}
        self.connection = await connect(
            self.server.ws_url + self.path,
            origin=self.origin,
            additional_headers=headers,
            proxy=None,
            open_timeout=10,
        )
        return self

    async def send(self, frame: dict[str, Any]) -> None:
        import json

        await self.connection.send(json.dumps(frame))

    async def next(self, timeout: float = 15) -> dict[str, Any]:
        import json

        frame = json.loads(await asyncio.wait_for(self.connection.recv(), timeout))
        self.frames.append(frame)
        stream_id = frame.get("stream_id") or (frame.get("message") or {}).get("stream_id")
        if stream_id and frame["type"] != "message":
            self.streams.setdefault(stream_id, StreamView()).apply(frame)
        for waiter in list(self.waiting):
            predicate, seen = waiter
            if seen.done() or predicate():
                self.waiting.remove(waiter)
                if not seen.done():
                    seen.set_result(None)
        return frame

    async def when(self, predicate: Any, timeout: float = 30) -> None:
        """Wait until ``predicate()`` holds of what this client has received, as another
        task reads its frames (an event to synchronise on, not a sleep)."""
        if predicate():
            return
        seen = asyncio.get_running_loop().create_future()
        self.waiting.append((predicate, seen))
        await asyncio.wait_for(seen, timeout)

    def reached(self, stream_id: str, seq: int) -> bool:
        """Whether this client holds the stream up to ``seq``, or its final status."""
        view = self.streams.get(stream_id)
        return view is not None and (view.last_seq >= seq or view.final is not None)

    async def until(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.next(timeout)
                if predicate(frame):
                    return frame

    async def prompt(self, text: str) -> str:
        """Send a prompt; return the new stream's id once this socket is its driver."""
        await self.send({"type": "prompt", "text": text})
        frame = await self.until(lambda f: f["type"] == "message" and f["driving"])
        return frame["message"]["stream_id"]

    async def until_final(self, stream_id: str, timeout: float = 30) -> StreamView:
        await self.until(
            lambda f: (
                f["type"] == "status"
                and f["stream_id"] == stream_id
                and f["status"] in FINAL_STATUSES
            ),
            timeout,
        )
        return self.streams[stream_id]

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


def http_get_json(server: DaphneServer, path: str, cookie: str | None) -> tuple[int, Any]:
    """A plain HTTP GET (urllib, no proxies) returning status and decoded JSON."""
    import json
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(server.http_url + path, headers={"Cookie": cookie or ""})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class SseClient:
    """A real Server-Sent Events client (aiohttp) over TCP: each event as a dict with
    ``event``, ``id``, ``data`` (decoded JSON), or ``comment`` for a comment line."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url, self.headers = url, headers or {}
        self.events: list[dict[str, Any]] = []
        self.status = 0
        self.response_headers: dict[str, str] = {}

    async def read(self, *, until: Any = None, timeout: float = 30) -> list[dict[str, Any]]:
        """Read events until the response ends or ``until(event)`` is true."""
        import asyncio
        import json

        import aiohttp

        async with (
            asyncio.timeout(timeout),
            aiohttp.ClientSession() as session,
            session.get(self.url, headers=self.headers) as response,
        ):
            self.status = response.status
            self.response_headers = dict(response.headers)
            if response.status != 200:
                self.events.append({"error": await response.json()})
                return self.events
            event: dict[str, Any] = {}
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.events.append({"comment": line[1:].strip()})
                elif line.startswith("retry:"):
                    continue
                elif line == "":
                    if event:
                        event["data"] = json.loads(event.get("data", "null"))
                        self.events.append(event)
                        if until is not None and until(event):
                            return self.events
                    event = {}
                else:
                    field, _, value = line.partition(":")
                    event[field] = value[1:] if value.startswith(" ") else value
        return self.events

    def frames(self) -> list[dict[str, Any]]:
        return [e["data"] for e in self.events if "data" in e]


@dataclass
class QCluster:
    """A real ``qcluster`` process (django-q2) on the test database."""

    process: subprocess.Popen[bytes]
    log_path: Path

    #: django-q2's guard loop calls the scheduler every 30 s, the first time 30 s after
    #: start.
    WAIT_SECONDS = 75

    @classmethod
    def start(cls, log_path: Path, command: list[str], env: dict[str, str]) -> QCluster:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest alone
        )
        return cls(process, log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, condition: Any, what: str) -> None:
        """Poll ``condition`` until true; fail with the log if the cluster exits or
        WAIT_SECONDS pass first."""
        deadline = time.monotonic() + self.WAIT_SECONDS
        while not condition():
            exited = self.process.poll()
            if exited is not None or time.monotonic() > deadline:
                raise AssertionError(f"{what} (exit code {exited}):\n{self.log()}")
            time.sleep(0.5)

    def stop(self) -> bool:
        """SIGINT to the main process (SIGTERM to the process group can deadlock it,
        django-q2#346); whether it stopped by itself, before being killed."""
        if self.process.poll() is not None:
            return True
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            return False
        return True


def make_reaper_due() -> None:
    """The reaper's schedule overdue (it runs at a cluster's first scheduler pass), the
    purge's a day away."""
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import Schedule

    from streaming.schedules import PURGE, REAPER, ensure_schedules

    ensure_schedules()
    Schedule.objects.filter(name=REAPER).update(next_run=timezone.now() - timedelta(minutes=1))
    Schedule.objects.filter(name=PURGE).update(next_run=timezone.now() + timedelta(days=1))


# --- Redis ----------------------------------------------------------------------------


def _redis_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def redis_ping(url: str) -> bool:
    """One PING, no retry (redis-py 8 retries a refused connection for ~3 s by default)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    host, port = _redis_address(url)
    client = redis.Redis(host=host, port=port, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@dataclass
class PrivateRedis:
    """A redis-server of the test's own on a free loopback port (no persistence), so that
    restarting it disturbs no other test run sharing the machine's Redis."""

    port: int
    directory: Path
    outages: list[tuple[float, float]] = field(default_factory=list)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--pidfile",
                str(self.directory / f"redis-{self.port}.pid"),
                "--logfile",
                str(self.directory / f"redis-{self.port}.log"),
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )
        wait_until(lambda: redis_ping(self.url()), 15, "Redis did not answer PING")

    def shutdown(self) -> None:
        subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "shutdown", "nosave"],
            capture_output=True,
            timeout=10,
        )
        wait_until(lambda: not redis_ping(self.url()), 10, "Redis did not stop")

    def restart(self, down_for: float) -> tuple[float, float]:
        """Shut Redis down (nothing saved), wait, start it; return (down, up) times on the
        monotonic clock, ``up`` being when it answers PING again."""
        self.shutdown()
        down = time.monotonic()
        try:
            time.sleep(down_for)
        finally:
            self.start()
        up = time.monotonic()
        self.outages.append((down, up))
        return down, up

    async def arestart(self, down_for: float) -> tuple[float, float]:
        return await asyncio.to_thread(self.restart, down_for)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it holds; RuntimeError past ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout} s")
        time.sleep(0.05)
