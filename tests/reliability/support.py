"""Helpers of the reliability scenarios: service outages, accounts, what the database
holds, clients that behave like the page's script, log checks."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import connections

from chatproject.chat.models import Conversation, Message
from streaming.models import Chunk, Stream
from tests.servers import (
    FINAL_STATUSES,
    DaphneServer,
    StreamView,
    session_cookie,
    wait_until,
)

# --- PostgreSQL -------------------------------------------------------------------------


def _pg_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def pg_ready() -> bool:
    try:
        result = subprocess.run(
            ["psql", "-w", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "select 1"],
            capture_output=True,
            timeout=5,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


@dataclass
class PostgresOutage:
    down_at: float | None = None
    up_at: float | None = None

    def stop_now(self) -> float:
        subprocess.run([*_pg_cluster(), "stop", "-m", "fast"], capture_output=True, timeout=30)
        self.down_at = time.monotonic()
        return self.down_at

    def start_now(self) -> float:
        subprocess.run([*_pg_cluster(), "start"], capture_output=True, timeout=60)
        wait_until(pg_ready, 30, "PostgreSQL did not accept connections")
        self.up_at = time.monotonic()
        return self.up_at

    def ensure_running(self) -> None:
        if not pg_ready():
            self.start_now()

    async def stop(self) -> float:
        return await asyncio.to_thread(self.stop_now)

    async def start(self) -> float:
        """Start it again, then drop the test process's broken connections."""
        up = await asyncio.to_thread(self.start_now)
        await sync_to_async(drop_connections)()
        return up


def drop_connections() -> None:
    """Close this thread's connections and any psycopg pool (its connections died with
    the server, and a pool hands them out again without checking)."""
    for connection in connections.all(initialized_only=True):
        connection.close()
        if hasattr(connection, "close_pool"):
            connection.close_pool()


# --- accounts and rows ------------------------------------------------------------------


@dataclass
class Account:
    user: Any
    cookie: str
    conversations: list[Conversation]

    @property
    def path(self) -> str:
        return ws_path(self.conversations[0])


def ws_path(conversation: Conversation) -> str:
    return f"/ws/conversations/{conversation.pk}/"


def create_account(name: str, conversations: int = 1, **extra: Any) -> Account:
    user = get_user_model().objects.create_user(name, password="pw", **extra)
    owned = [Conversation.objects.create(owner=user) for _ in range(conversations)]
    return Account(user, session_cookie(user), owned)


account = sync_to_async(create_account)


@dataclass
class Persisted:
    """What the database holds for one stream."""

    status: str
    error: str
    last_seq: int
    row_text: str
    chunks: list[tuple[int, str, str]]  # (seq, part, text)
    message_text: str
    message_status: str
    row_reasoning: str = ""
    message_reasoning: str = ""

    def part_text(self, part: str) -> str:
        return "".join(text for _, of, text in self.chunks if of == part)

    @property
    def chunk_text(self) -> str:
        return self.part_text("text")

    @property
    def chunk_reasoning(self) -> str:
        return self.part_text("reasoning")

    @property
    def consecutive(self) -> bool:
        return [seq for seq, _, _ in self.chunks] == list(range(len(self.chunks)))


def read_persisted(stream_id: str) -> Persisted:
    stream = Stream.objects.get(id=stream_id)
    chunks = list(
        Chunk.objects.filter(stream_id=stream_id).order_by("seq").values_list("seq", "part", "text")
    )
    message = Message.objects.get(stream_id=stream_id)
    return Persisted(
        stream.status,
        stream.error,
        stream.last_seq,
        stream.text,
        chunks,
        message.text,
        message.status,
        stream.reasoning,
        message.reasoning,
    )


persisted = sync_to_async(read_persisted)


def count_rows() -> dict[str, int]:
    return {
        "users": get_user_model().objects.count(),
        "conversations": Conversation.objects.count(),
        "messages": Message.objects.count(),
        "streams": Stream.objects.count(),
        "chunks": Chunk.objects.count(),
    }


row_counts = sync_to_async(count_rows)


def assert_settled(db: Persisted, status: str | set[str]) -> None:
    """A final stream as the contract says: its status in ``status``, chunks 0..n
    consecutive, and for each part row = chunks = message, the message carrying the
    status."""
    wanted = {status} if isinstance(status, str) else status
    assert db.status in wanted, (db.status, db.error)
    assert db.consecutive, [seq for seq, _, _ in db.chunks]
    assert db.last_seq == len(db.chunks) - 1, (db.last_seq, len(db.chunks))
    assert db.row_text == db.chunk_text
    assert db.message_text == db.chunk_text
    assert db.row_reasoning == db.message_reasoning == db.chunk_reasoning
    assert db.message_status == db.status


async def reap_every(interval: float, stop: asyncio.Event) -> None:
    """The reaper as a scheduler would run it, but every ``interval`` seconds."""
    from streaming.housekeeping import streams_reap

    reap = sync_to_async(streams_reap)
    while not stop.is_set():
        await reap()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


# --- clients ------------------------------------------------------------------------------


class CheckedView(StreamView):
    """``StreamView`` that records, instead of raising, what a client would notice:

    * a chunk whose seq skips ahead (a gap; the client then resumes),
    * a chunk it already holds: allowed only when explained by its own resume crossing
      live chunks in flight (seq after the resume's ``after``, same text), counted apart,
    * a final status its text does not match (length/sha256; the client resumes from -1).
    """

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[int, str] = {}
        self.resume_after: int | None = None
        self.gaps: list[tuple[int, int]] = []
        self.duplicates: list[int] = []
        self.overlaps = 0
        self.mismatches = 0
        self.snapshots = 0
        self.needs_resume = False

    def apply(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "snapshot":
            self.snapshots += 1
            self.text, self.last_seq, self.texts = frame["text"], frame["last_seq"], {}
            self.reasoning = frame["reasoning"]
        elif kind == "chunk":
            seq = frame["seq"]
            if seq <= self.last_seq:
                known = self.texts.get(seq, frame["text"])
                if (
                    self.resume_after is not None
                    and seq > self.resume_after
                    and known == frame["text"]
                ):
                    self.overlaps += 1
                else:
                    self.duplicates.append(seq)
            elif seq > self.last_seq + 1:
                self.gaps.append((self.last_seq, seq))
                self.needs_resume = True
            else:
                self.add(frame["part"], frame["text"])
                self.texts[seq] = frame["text"]
                self.last_seq = seq
        elif kind == "status" and frame["status"] in FINAL_STATUSES:
            self.final = frame
            if not self.verified():
                self.mismatches += 1
                self.final = None
                self.needs_resume = True
                self.resume_after = -1
        else:
            super().apply(frame)

    @property
    def clean(self) -> bool:
        return not (self.gaps or self.duplicates or self.mismatches)


async def drain(page: Page) -> None:
    """Read a socket until it closes."""
    with contextlib.suppress(Exception):
        while True:
            await page.recv(60)


class Page:
    """A websocket client that behaves like the conversation page's script: when its
    socket closes it reconnects and resumes each live stream from its last seq; when a
    live stream it follows is quiet for ``idle`` seconds it resumes it; on a gap or a
    digest mismatch it resumes (from its last seq, or from -1)."""

    def __init__(
        self, server: DaphneServer, path: str, cookie: str, *, idle: float | None = 2.0
    ) -> None:
        self.server, self.path, self.cookie, self.idle = server, path, cookie, idle
        self.connection: Any = None
        self.views: dict[str, CheckedView] = {}
        self.frames: list[dict[str, Any]] = []
        self.token_times: list[float] = []
        self.connects = 0
        self.closes: list[int | None] = []
        self.idle_resumes = 0
        self.resumes = 0
        self.handshake_failures = 0

    def view(self, stream_id: str) -> CheckedView:
        return self.views.setdefault(stream_id, CheckedView())

    async def connect(self, *, retry_for: float = 0.0) -> Page:
        from websockets.asyncio.client import connect

        deadline = time.monotonic() + retry_for
        while True:
            try:
                self.connection = await connect(
                    self.server.ws_url + self.path,
                    origin=self.server.http_url,  # the site's own scheme, host and port
                    additional_headers={"Cookie": self.cookie},
                    proxy=None,
                    open_timeout=10,
                    max_size=None,
                )
                self.connects += 1
                return self
            except Exception as exc:
                if not _handshake_error(exc) or time.monotonic() >= deadline:
                    raise
                self.handshake_failures += 1
                await asyncio.sleep(0.25)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(frame))

    async def resume(self, stream_id: str, after: int | None = None) -> None:
        view = self.view(stream_id)
        after = view.last_seq if after is None else after
        view.resume_after, view.needs_resume = after, False
        self.resumes += 1
        with contextlib.suppress(Exception):
            await self.send({"type": "resume", "stream_id": stream_id, "after": after})

    async def recv(self, timeout: float) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.connection.recv(), timeout))
        self.frames.append(frame)
        kind = frame["type"]
        if kind == "message":
            stream_id = frame["message"]["stream_id"]
            if stream_id:
                self.view(stream_id)
        elif "stream_id" in frame:
            if kind == "token":
                self.token_times.append(time.monotonic())
            self.view(frame["stream_id"]).apply(frame)
        return frame

    def live(self) -> list[str]:
        return [sid for sid, view in self.views.items() if view.final is None]

    async def step(self, retry_for: float = 30.0) -> dict[str, Any] | None:
        """Receive one frame, healing the socket as the page would; None when it had to
        heal (reconnect or resume) instead."""
        from websockets.exceptions import ConnectionClosed

        if self.connection is None:
            await self.connect(retry_for=retry_for)
            for stream_id in self.live():
                await self.resume(stream_id)
            return None
        try:
            frame = await self.recv(self.idle if self.idle and self.live() else 1.0)
        except TimeoutError:
            if self.idle and self.live():
                self.idle_resumes += 1
                for stream_id in self.live():
                    await self.resume(stream_id)
            return None
        except ConnectionClosed as closed:
            self.closes.append(closed.rcvd.code if closed.rcvd else None)
            self.connection = None
            await asyncio.sleep(0.1)
            return None
        for stream_id, view in self.views.items():
            if view.needs_resume:
                await self.resume(stream_id, -1 if view.resume_after == -1 else None)
        return frame

    async def until(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.step()
                if frame is not None and predicate(frame):
                    return frame

    async def until_final(self, stream_id: str, timeout: float = 30) -> CheckedView:
        view = self.view(stream_id)
        async with asyncio.timeout(timeout):
            while view.final is None:
                await self.step()
        return view

    async def prompt(self, text: str) -> str:
        """Send a prompt; return the stream id of the answer this socket drives."""
        await self.send({"type": "prompt", "text": text})
        frame = await self.until(
            lambda f: (f["type"] == "message" and f["driving"]) or f["type"] == "error"
        )
        assert frame["type"] == "message", frame
        return frame["message"]["stream_id"]

    async def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
            self.connection = None


def _handshake_error(exc: BaseException) -> bool:
    from websockets.exceptions import InvalidHandshake

    return isinstance(exc, InvalidHandshake | OSError | TimeoutError)


# --- HTTP without following redirects -----------------------------------------------------


@dataclass
class HttpAnswer:
    status: int
    location: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


def http_get(server: DaphneServer, path: str, cookie: str | None = None) -> HttpAnswer:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {"Host": "localhost", **({"Cookie": cookie} if cookie else {})}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return HttpAnswer(response.status, response.getheader("Location") or "", response.read())
    finally:
        connection.close()


ahttp_get = sync_to_async(http_get, thread_sensitive=False)


# --- logs and processes -------------------------------------------------------------------

PROBLEM_MARKERS = ("Traceback", "Exception inside application", " ERROR ", " CRITICAL ")


def log_problems(*servers: DaphneServer) -> list[str]:
    """The lines of the servers' logs that show a server-side failure."""
    found = []
    for server in servers:
        for line in server.log().splitlines():
            if any(marker in line for marker in PROBLEM_MARKERS):
                found.append(f"{server.port}: {line}")
    return found


def escaped_exceptions(*servers: DaphneServer) -> list[str]:
    """Exceptions that escaped the application (daphne logs each as an ERROR) and any
    other ERROR or CRITICAL line: each is a server bug, unlike a WARNING with a trace."""
    return [line for line in log_problems(*servers) if "Traceback" not in line]


def log_lines(server: DaphneServer, needle: str) -> list[str]:
    return [line for line in server.log().splitlines() if needle in line]


def established_connections(port: int) -> int:
    """How many TCP connections to ``port`` on this machine are open (the server's side,
    from /proc/net): 0 once a server has let go of every client."""
    established = "01"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                count += local_port == port and fields[3] == established
    return count


def rss_kib(server: DaphneServer) -> int:
    """Resident memory of the server process (VmRSS), in KiB."""
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


def sentences(count: int, words: int = 6, tag: str = "") -> str:
    """A reply of ``count`` sentences of ``words`` words: the batcher cuts at each end."""
    return " ".join(
        " ".join(f"{tag}w{i}_{j}" for j in range(words)) + ("!" if i % 4 == 3 else ".")
        for i in range(count)
    )
