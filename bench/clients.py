"""The benchmarks' clients: a driver socket sending a prompt, a viewer socket and a
Server-Sent Events reader following a stream. Each stamps every frame's arrival and
builds its ``StreamCheck`` (the contract's invariants) as it reads.

They run many to a process on the same cores as the servers, so they are kept cheap:
orjson for every frame, one timeout scope per read and no task per frame.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.invariants import FINAL, StreamCheck
from bench.text import prompt_tokens

#: Seconds a driver waits for its final status after its last token.
STATUS_WAIT = 10.0
#: Seconds a reader may go without a frame before its stream counts as lost.
SILENCE = 30.0


@dataclass
class Drive:
    """One prompt sent on a driver socket (chat or echo), and what came back."""

    prompt: str
    sent: float = 0.0
    stream_id: str = ""
    arrivals: list[float] = field(default_factory=list)
    check: StreamCheck = field(default_factory=lambda: StreamCheck("driver"))
    #: Each live chunk's commit stamp (``bench_commit``), in order.
    commits: list[float] = field(default_factory=list)

    @property
    def first_token(self) -> float:
        """Seconds from sending the prompt to the first token (NaN without one)."""
        return self.arrivals[0] - self.sent if self.arrivals else math.nan

    @property
    def expected(self) -> str:
        return "".join(prompt_tokens(self.prompt)[1])


async def drive(ws: Any, prompt: str, *, who: str = "driver", delay: float = 0.0) -> Drive:
    """Send ``prompt`` (after ``delay`` seconds) and read until its final status (for at
    most STATUS_WAIT seconds after the last token expected)."""
    if delay:
        await asyncio.sleep(delay)
    run = Drive(prompt, check=StreamCheck(who))
    expected = len(prompt_tokens(prompt)[1])
    arrivals, check = run.arrivals, run.check
    run.sent = time.monotonic()
    await ws.send(orjson.dumps({"type": "prompt", "text": prompt}).decode())
    while True:
        try:
            async with asyncio.timeout(STATUS_WAIT if len(arrivals) >= expected else 120):
                raw = await ws.recv()
        except TimeoutError:
            if len(arrivals) >= expected:
                return run  # the final status never came: the check says so
            raise
        now = time.monotonic()
        frame = orjson.loads(raw)
        kind = frame["type"]
        if kind == "token":
            arrivals.append(now)
            check.tokens.append(frame["text"])
            run.stream_id = run.stream_id or frame["stream_id"]
        elif kind == "message":
            if frame["driving"]:
                run.stream_id = frame["message"]["stream_id"]
        elif kind == "error":
            raise RuntimeError(f"server refused the prompt: {frame}")
        elif frame.get("stream_id") == run.stream_id:
            if kind == "chunk" and "bench_commit" in frame:
                run.commits.append(frame["bench_commit"])
            check.frame(frame)
            if kind == "status" and frame["status"] in FINAL:
                return run


@dataclass
class Follow:
    """One reader of one stream: chunk latencies (arrival minus ``bench_commit``), the
    chunks that came without a stamp (read from the database: a catch-up or a repair)."""

    latencies: list[float] = field(default_factory=list)
    unstamped: int = 0
    check: StreamCheck = field(default_factory=lambda: StreamCheck("reader"))

    def frame(self, frame: dict[str, Any], now: float) -> bool:
        """Take one frame of the stream; True once it was the final status."""
        kind = frame["type"]
        if kind == "chunk":
            if "bench_commit" in frame:
                self.latencies.append(now - frame["bench_commit"])
            else:
                self.unstamped += 1
        elif kind == "snapshot":
            self.unstamped += 1
        self.check.frame(frame)
        return kind == "status" and frame["status"] in FINAL


async def follow_socket(ws: Any, target: str | None = None, who: str = "viewer") -> Follow:
    """A chat socket's frames of ``target`` (or of the stream the next assistant message
    announces) until its final status, or SILENCE seconds without a frame."""
    follow = Follow(check=StreamCheck(who))
    while True:
        try:
            async with asyncio.timeout(SILENCE):
                raw = await ws.recv()
        except TimeoutError:
            return follow
        now = time.monotonic()
        frame = orjson.loads(raw)
        if frame["type"] == "message":
            if target is None and frame["message"]["role"] == "assistant":
                target = frame["message"]["stream_id"]
            continue
        if target is not None and frame.get("stream_id") == target and follow.frame(frame, now):
            return follow


async def follow_sse(
    session: Any, url: str, cookie: str, *, ready: asyncio.Event | None = None,
    opening: asyncio.Semaphore | None = None, who: str = "sse",
) -> Follow:  # fmt: skip
    """``GET url`` as an event stream, every ``data:`` line a frame, until the final
    status (or SILENCE seconds without a byte); what arrived is parsed a read at a
    time, as a browser's EventSource does, not a timed line at a time. ``ready`` is set
    once the response's first bytes came (the server is then subscribing); ``opening``
    bounds how many streams are being opened at once (it is held until then)."""
    follow = Follow(check=StreamCheck(who))
    if opening is not None:
        await opening.acquire()
    held = opening is not None

    def opened() -> None:
        nonlocal held
        if ready is not None:
            ready.set()
        if held:
            held = False
            opening.release()  # type: ignore[union-attr]

    try:
        headers = {"Cookie": cookie, "Accept": "text/event-stream"}
        async with session.get(url, headers=headers) as r:
            if r.status != 200:
                follow.check.problems.append(f"HTTP {r.status}: {(await r.read())[:200]!r}")
                return follow
            content, pending = r.content, b""
            while True:
                try:
                    async with asyncio.timeout(SILENCE):
                        data = await content.readany()
                except TimeoutError:
                    return follow
                if not data:
                    return follow
                now = time.monotonic()
                opened()
                *events, pending = (pending + data).split(b"\n\n")
                for event in events:
                    for line in event.split(b"\n"):
                        if line.startswith(b"data: ") and follow.frame(orjson.loads(line[6:]), now):
                            return follow
    finally:
        opened()
