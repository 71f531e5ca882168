"""A small OpenAI-compatible chat completions server for tests, on real loopback HTTP.

The openai SDK 3.x talks through ``httpx2``, which respx cannot intercept; and later
integration tests run daphne in other processes. So instead of mocking, tests talk to
this server: aiohttp in a background thread with its own event loop, on 127.0.0.1 and a
free port, speaking the real SSE wire format of ``POST /v1/chat/completions``.

Behaviour is chosen per request by ``[scenario=NAME]`` anywhere in the last user message,
or else by the ``scenario`` attribute:

``normal``           the ``reply`` text as word tokens, one every ``token_delay`` seconds
``http500``          HTTP 500 with an OpenAI-style JSON error body
``http429``          HTTP 429 (rate limit) with an OpenAI-style JSON error body
``cut``              ``cut_after`` tokens, then the connection is closed without [DONE]
``slow_first_byte``  waits ``first_byte_delay`` seconds before the headers, then normal
``hang``             ``hang_after`` tokens, then silence for ``hang_seconds``, then the rest
``empty``            role chunk, stop chunk, [DONE]: no content at all
``endless``          tokens (the reply, over and over) until the client goes away

Every wait is taken in small steps, so ``stop()`` and a departing client end it promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

SCENARIOS = frozenset(
    {"normal", "http500", "http429", "cut", "slow_first_byte", "hang", "empty", "endless"}
)
DEFAULT_REPLY = "Hello from the fake model. It streams word by word, like a real one!"

_DIRECTIVE_RE = re.compile(r"\[scenario=([A-Za-z0-9_]+)\]")
_TOKEN_RE = re.compile(r"\S+\s*")
_STEP = 0.02  # granularity of every wait, in seconds


class _ClientGone(Exception):
    """The client closed the connection before the response was complete."""


class _Stopping(Exception):
    """The server is shutting down; abandon the response."""


class FakeLLMServer:
    """OpenAI-compatible streaming server running in its own thread (see module doc).

    Settable attributes (read at each request): ``scenario``, ``reply``, ``token_delay``,
    ``first_byte_delay``, ``cut_after``, ``hang_after``, ``hang_seconds``.
    Observations (thread-safe): ``requests``, ``request_count``, ``disconnects``,
    ``completed``.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._startup_error: BaseException | None = None
        self._ids = itertools.count(1)
        self.reset()

    # --- configuration and observations ------------------------------------------------

    def reset(self) -> None:
        """Restore the default behaviour and forget what was observed."""
        self.scenario = "normal"
        self.reply = DEFAULT_REPLY
        self.token_delay = 0.005
        self.first_byte_delay = 2.0
        self.cut_after = 3
        self.hang_after = 3
        self.hang_seconds = 3600.0
        with self._lock:
            self._requests: list[dict[str, Any]] = []
            self._disconnects = 0
            self._completed = 0

    @property
    def base_url(self) -> str:
        """What to pass as the SDK's ``base_url``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def disconnects(self) -> int:
        """Responses whose client went away before the end."""
        with self._lock:
            return self._disconnects

    @property
    def completed(self) -> int:
        """Streaming responses sent to the end ([DONE] included)."""
        with self._lock:
            return self._completed

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01
    ) -> bool:
        """Poll ``predicate`` until true or ``timeout``; return its last value.

        Blocking and asyncio-free, for sync tests and tests driving other processes. In
        an async test use ``wait_for_async``: the client's own loop must keep running,
        e.g. to actually close a socket it has just released.
        """
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return bool(predicate())
            time.sleep(interval)

    async def wait_for_async(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
        interval: float = 0.01,
    ) -> bool:
        """``wait_for`` that sleeps with asyncio, leaving the caller's loop running."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return bool(predicate())
            await asyncio.sleep(interval)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeLLMServer:
        """Bind a free port and serve from a daemon thread; return once accepting."""
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"fake-llm-{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("FakeLLMServer did not start within 10 s")
        if self._startup_error is not None:
            raise RuntimeError("FakeLLMServer failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Abandon in-flight responses, close the port and join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._stopping.set()
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._ready.clear()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            sock.close()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    # --- HTTP ---------------------------------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "The request body is not valid JSON.", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "invalid_request_error")
        with self._lock:
            self._requests.append(body)

        scenario = _directive(body) or self.scenario
        if scenario not in SCENARIOS:
            return _error(400, f"Unknown fake scenario {scenario!r}.", "invalid_request_error")
        if scenario == "http500":
            return _error(500, "The fake server had an error.", "server_error")
        if scenario == "http429":
            return _error(429, "Rate limit reached (fake).", "requests", code="rate_limit_exceeded")

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            if scenario == "slow_first_byte":
                await self._pause(self.first_byte_delay, request)
            if not body.get("stream"):
                return self._whole_completion(body, "" if scenario == "empty" else self.reply)
            await response.prepare(request)
            await self._stream(request, response, body, scenario)
        except _ClientGone:
            with self._lock:
                self._disconnects += 1
            self._drop(request)
        except _Stopping:
            self._drop(request)
        return response

    @staticmethod
    def _drop(request: web.Request) -> None:
        """Forget the connection: its client left, or the server is going away."""
        if request.transport is not None:
            request.transport.abort()

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        body: dict[str, Any],
        scenario: str,
    ) -> None:
        chunk_id = f"chatcmpl-fake-{next(self._ids)}"
        model = str(body.get("model", "fake-model"))

        async def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            await self._send(response, request, _chunk(chunk_id, model, delta, finish_reason))

        await send({"role": "assistant", "content": ""})
        tokens = _TOKEN_RE.findall(self.reply)
        if scenario == "endless":
            for token in itertools.cycle(tokens or ["token "]):
                await self._pause(self.token_delay, request)
                await send({"content": token})
        for index, token in enumerate([] if scenario == "empty" else tokens):
            if scenario == "cut" and index == self.cut_after:
                # Abrupt end: no [DONE], no final empty chunk of the chunked encoding.
                # close() (not abort()) so the tokens already written still arrive.
                assert request.transport is not None
                request.transport.close()
                return
            if scenario == "hang" and index == self.hang_after:
                await self._pause(self.hang_seconds, request)
            await self._pause(self.token_delay, request)
            await send({"content": token})
        await send({}, finish_reason="stop")
        await self._write(response, request, b"data: [DONE]\n\n")
        await response.write_eof()
        with self._lock:
            self._completed += 1

    def _whole_completion(self, body: dict[str, Any], text: str) -> web.Response:
        """The non-streaming shape, for completeness (``stream`` absent or false)."""
        return web.json_response(
            {
                "id": f"chatcmpl-fake-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": str(body.get("model", "fake-model")),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    async def _send(
        self, response: web.StreamResponse, request: web.Request, chunk: dict[str, Any]
    ) -> None:
        await self._write(response, request, f"data: {json.dumps(chunk)}\n\n".encode())

    async def _write(self, response: web.StreamResponse, request: web.Request, data: bytes) -> None:
        if _transport_closing(request):
            raise _ClientGone
        try:
            await response.write(data)
        except ConnectionError as exc:  # aiohttp's ClientConnectionResetError and kin
            raise _ClientGone from exc

    async def _pause(self, seconds: float, request: web.Request) -> None:
        """Sleep in small steps, noticing a departing client or a stopping server."""
        deadline = time.monotonic() + max(seconds, 0.0)
        while True:
            if self._stopping.is_set():
                raise _Stopping
            if _transport_closing(request):
                raise _ClientGone
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(_STEP, remaining))


def _transport_closing(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _directive(body: dict[str, Any]) -> str | None:
    """The ``[scenario=NAME]`` in the last user message, if any."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                content = " ".join(
                    str(part.get("text", "")) for part in content if isinstance(part, dict)
                )
            match = _DIRECTIVE_RE.search(str(content or ""))
            return match.group(1) if match else None
    return None


def _chunk(
    chunk_id: str, model: str, delta: dict[str, Any], finish_reason: str | None
) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _error(status: int, message: str, kind: str, *, code: str | None = None) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status=status,
    )


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    """A started FakeLLMServer of its own for each test (no state shared between tests)."""
    server = FakeLLMServer().start()
    try:
        yield server
    finally:
        server.stop()
