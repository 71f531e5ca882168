"""A small OpenAI-compatible chat completions server for tests, on real loopback HTTP.

Instead of mocking the HTTP client, tests talk to this server (integration tests do so
from daphne processes of their own): aiohttp in a background thread with its own event
loop, on 127.0.0.1 and a free port, speaking the real SSE wire format of
``POST /v1/chat/completions``.

Behaviour is chosen per request by ``[scenario=NAME]`` anywhere in the last user message,
or else by the ``scenario`` attribute:

``normal``            the ``reply`` text as word tokens, one every ``token_delay`` seconds
``http500``           HTTP 500 with an OpenAI-style JSON error body
``http429``           HTTP 429 (rate limit) with an OpenAI-style JSON error body
``cut``               ``cut_after`` tokens, then the connection is closed without [DONE]
``slow_first_byte``   waits ``first_byte_delay`` seconds before the headers, then normal
``hang``              ``hang_after`` tokens, then silence for ``hang_seconds``, then the rest
``empty``             role chunk, stop chunk, [DONE]: no content at all
``endless``           tokens (the reply, over and over) until the client goes away
``reasoning_content`` the ``reasoning_reply`` tokens in ``delta.reasoning_content`` (vLLM,
                      DeepSeek), then the reply in ``delta.content``
``reasoning``         the same in ``delta.reasoning`` (OpenRouter, Ollama)
``length``            the reply, then finish_reason ``length`` (the token limit was hit)
``rejects_stream_options``  HTTP 400 when the body has ``stream_options``, else normal
``stream_error``      ``error_after`` tokens, then an ``{"error": ...}`` event, then the end
``bare``              the reply in chunks with no ``model``, no finish_reason and no
                      usage, whatever was asked: a server that reports nothing
``odd_framing``       the reply in every SSE framing a client must read: ``data:`` without
                      the space, CRLF line ends, comment lines, ``event:``/``id:``/``retry:``
                      lines, one chunk's JSON over two ``data:`` lines; no [DONE] at the end
``not_json``          the role chunk, then an event whose data is not JSON

A request whose body has ``stream_options.include_usage`` gets, as real servers send
it, a last chunk with empty ``choices`` and the ``usage`` (prompt words, completion
tokens with reasoning among them, ``completion_tokens_details.reasoning_tokens``),
except in ``bare``. ``GET /v1/models`` lists one model (and counts ``model_lists``).

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
    {
        "normal",
        "http500",
        "http429",
        "cut",
        "slow_first_byte",
        "hang",
        "empty",
        "endless",
        "reasoning_content",
        "reasoning",
        "length",
        "rejects_stream_options",
        "stream_error",
        "bare",
        "odd_framing",
        "not_json",
    }
)
REASONING_SCENARIOS = frozenset({"reasoning_content", "reasoning"})
DEFAULT_REPLY = "Hello from the fake model. It streams word by word, like a real one!"
DEFAULT_REASONING = "The user greets me. I should greet them back, briefly."

_DIRECTIVE_RE = re.compile(r"\[scenario=([A-Za-z0-9_]+)\]")
_TOKEN_RE = re.compile(r"\S+\s*")
_STEP = 0.02  # granularity of every wait, in seconds


class _ClientGone(Exception):
    """The client closed the connection before the response was complete."""


class _Stopping(Exception):
    """The server is shutting down; abandon the response."""


class FakeLLMServer:
    """OpenAI-compatible streaming server running in its own thread (see module doc).

    Settable attributes (read at each request): ``scenario``, ``reply``,
    ``reasoning_reply``, ``token_delay``, ``first_byte_delay``, ``cut_after``,
    ``hang_after``, ``hang_seconds``, ``error_after``.
    Observations (thread-safe): ``requests``, ``request_count``, ``disconnects``,
    ``completed``, ``model_lists``, ``peers``.
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
        self.reasoning_reply = DEFAULT_REASONING
        self.token_delay = 0.005
        self.first_byte_delay = 2.0
        self.cut_after = 3
        self.hang_after = 3
        self.hang_seconds = 3600.0
        self.error_after = 3
        with self._lock:
            self._requests: list[dict[str, Any]] = []
            self._disconnects = 0
            self._completed = 0
            self._model_lists = 0
            self._peers: list[Any] = []

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

    @property
    def peers(self) -> list[Any]:
        """The client address of every request, oldest first: one address for several
        requests means they shared a kept-alive connection."""
        with self._lock:
            return list(self._peers)

    @property
    def model_lists(self) -> int:
        """``GET /v1/models`` requests answered (what a provider's warm-up sends)."""
        with self._lock:
            return self._model_lists

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
        app.router.add_get("/v1/models", self._models)
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

    async def _models(self, request: web.Request) -> web.Response:
        with self._lock:
            self._model_lists += 1
            self._peers.append(request.transport and request.transport.get_extra_info("peername"))
        return web.json_response(
            {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0}]}
        )

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "The request body is not valid JSON.", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "invalid_request_error")
        with self._lock:
            self._requests.append(body)
            self._peers.append(request.transport and request.transport.get_extra_info("peername"))

        scenario = _directive(body) or self.scenario
        if scenario not in SCENARIOS:
            return _error(400, f"Unknown fake scenario {scenario!r}.", "invalid_request_error")
        if scenario == "http500":
            return _error(500, "The fake server had an error.", "server_error")
        if scenario == "http429":
            return _error(429, "Rate limit reached (fake).", "requests", code="rate_limit_exceeded")
        if scenario == "rejects_stream_options" and "stream_options" in body:
            return _error(
                400, "Unrecognized request argument supplied: stream_options", "invalid_request"
            )

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
        model = None if scenario == "bare" else str(body.get("model", "fake-model"))
        sent = itertools.count()

        async def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            chunk = _chunk(chunk_id, model, delta, finish_reason)
            if scenario == "odd_framing":
                await self._write(response, request, _odd_frame(chunk, next(sent)))
            else:
                await self._send(response, request, chunk)

        await send({"role": "assistant", "content": ""})
        if scenario == "not_json":
            await self._write(response, request, b"data: this is not JSON\n\n")
        tokens = _TOKEN_RE.findall(self.reply)
        thinks = scenario in REASONING_SCENARIOS
        thoughts = _TOKEN_RE.findall(self.reasoning_reply) if thinks else []
        if scenario == "endless":
            for token in itertools.cycle(tokens or ["token "]):
                await self._pause(self.token_delay, request)
                await send({"content": token})
        for thought in thoughts:
            await self._pause(self.token_delay, request)
            await send({scenario: thought})
        for index, token in enumerate([] if scenario == "empty" else tokens):
            if scenario == "cut" and index == self.cut_after:
                # Abrupt end: no [DONE], no final empty chunk of the chunked encoding.
                # close() (not abort()) so the tokens already written still arrive.
                assert request.transport is not None
                request.transport.close()
                return
            if scenario == "stream_error" and index == self.error_after:
                error = {"message": "The fake model broke down.", "type": "server_error"}
                await self._send(response, request, {"error": error})
                await response.write_eof()
                return
            if scenario == "hang" and index == self.hang_after:
                await self._pause(self.hang_seconds, request)
            await self._pause(self.token_delay, request)
            await send({"content": token})
        if scenario != "bare":
            await send({}, finish_reason="length" if scenario == "length" else "stop")
            if _asks_usage(body):
                sent_tokens = 0 if scenario == "empty" else len(tokens)
                usage = _usage(body, sent_tokens + len(thoughts), len(thoughts))
                await self._send(response, request, {**_chunk(chunk_id, model, {}, None), **usage})
        if scenario != "odd_framing":
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
    chunk_id: str, model: str | None, delta: dict[str, Any], finish_reason: str | None
) -> dict[str, Any]:
    """A chat.completion.chunk; without ``model`` when it is None (a bare server)."""
    chunk: dict[str, Any] = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if model is None:
        del chunk["model"]
        del chunk["choices"][0]["finish_reason"]
    return chunk


def _asks_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _usage(body: dict[str, Any], completion: int, reasoning: int) -> dict[str, Any]:
    """The usage chunk's fields: no choices, and the counts (prompt = words sent)."""
    messages = body.get("messages") or []
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
    return {
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        },
    }


def _odd_frame(chunk: dict[str, Any], index: int) -> bytes:
    """One chunk as an event in the ``index``-th of the framings ``odd_framing`` cycles."""
    data = json.dumps(chunk)
    kind = index % 5
    if kind == 0:  # no space after the colon, CRLF line ends
        return f"data:{data}\r\n\r\n".encode()
    if kind == 1:  # a comment first, as servers send to keep proxies from timing out
        return f": keep-alive\n\ndata: {data}\n\n".encode()
    if kind == 2:  # a named event with an id and a retry hint
        return f"event: message\nid: {index}\nretry: 1000\ndata: {data}\n\n".encode()
    if kind == 3:  # the JSON over two data lines (joined with a newline, still JSON)
        head, tail = data.split(", ", 1)
        return f"data: {head},\ndata: {tail}\n\n".encode()
    return f"data: {data}\r\n\r\n".encode()  # CRLF with the space


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
