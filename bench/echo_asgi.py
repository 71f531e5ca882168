"""The ASGI application every benchmark daphne serves: chatproject's application,
untouched, plus what the benchmarks need beside it.

* ``ws /bench/echo/``: the raw baseline. On a ``prompt`` frame it sends the very token
  frames the chat's driver would send for that prompt (the demo answer's tokens, same
  sizes, same pace), straight to the socket: no database, no batching, no channel layer.
* ``ws /bench/echo/llm/``: the same baseline fed by the configured LLM provider (the
  ``openai`` provider on the benchmarks' LLM server), exactly as the chat calls it: what
  the provider costs is on both sides, what the stack adds is the difference.
* ``GET /bench/stamps/``: when each token of the instrumented text source was produced
  (``time.monotonic()``, which is CLOCK_MONOTONIC and so comparable across processes of
  one machine) and how often each prompt was asked, for the echo and the chat's driver.
* ``POST /bench/release/``: lets every prompt written with ``gate`` start (their readers
  are connected by then).
* ``POST /bench/replay/`` (with ``BENCH_INSTRUMENT=1``): the fanout baseline. Tells the
  conversation's sockets of a stream, as a prompt does (one ``chat.message`` group
  event), then sends the given chunk frames by plain ``group_send`` from this process
  with the given spacing, each stamped with ``bench_commit`` just before its
  ``group_send``, then a final status.
* ``GET /bench/sql/`` (with ``BENCH_COUNT_SQL=1``): the statements this process ran and
  its write transactions (``bench.counters.StatementCounter``); with ``?appends=1``, the
  chunk writes the process writer made for each stream.
* With ``BENCH_INSTRUMENT=1``, two measuring points are put in the chat's path. With the
  ``demo`` provider, the provider becomes the demo text source with those stamps (paced
  by ``pace=N`` and cut at ``tokens=N`` in the prompt); and each ``chunk`` frame carries
  ``bench_commit``, the moment the transaction that wrote it committed (the process
  writer's round returned), put on the frame when the round's group message is sent.
  Everything else (consumer, driver, writer, fanout) is the product's.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from bench.text import prompt_tokens
from chatproject.asgi import application as chat_application

#: prompt → production time of each of its tokens, until fetched from /bench/stamps/.
STAMPS: dict[str, list[float]] = {}
#: prompt → how many times a text source was asked for it.
CALLS: Counter[str] = Counter()
#: Opened by POST /bench/release/: gated prompts wait for it.
_GATE: asyncio.Event | None = None
#: (stream id, first seq of a write) → when its round committed.
_COMMITS: dict[tuple[str, int], float] = {}


def _gate() -> asyncio.Event:
    global _GATE
    if _GATE is None:
        _GATE = asyncio.Event()
    return _GATE


async def stamped_tokens(prompt: str) -> AsyncIterator[str]:
    """The tokens of ``prompt_tokens``, paced like ``DemoProvider``, each stamped."""
    CALLS[prompt] += 1
    pace, tokens = prompt_tokens(prompt)
    if " gate" in prompt:
        await _gate().wait()
    delay = 1.0 / pace if pace > 0 else 0.0
    stamps = STAMPS.setdefault(prompt, [])
    for index, token in enumerate(tokens):
        await asyncio.sleep(delay if index else 0)
        stamps.append(time.monotonic())
        yield token


class StampedProvider:
    """The chat's LLM provider while instrumented (same interface as DemoProvider, and,
    like it, one async generator between the driver and the text)."""

    def stream(self, messages: Sequence[Any]) -> AsyncIterator[str]:
        prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
        return stamped_tokens(prompt)

    async def warm_up(self) -> None:
        """Nothing to get ready."""


class EchoConsumer(AsyncJsonWebsocketConsumer):
    """The raw websocket baseline: tokens from a task of their own, like the driver,
    sent with the component's own JSON encoder."""

    use_provider = False

    async def connect(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        await self.accept()

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        from streaming.frames import encode_frame

        return encode_frame(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "prompt":
            task = asyncio.create_task(self.echo(str(content.get("text", ""))))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def source(self, prompt: str) -> AsyncIterator[Any]:
        if not self.use_provider:
            return stamped_tokens(prompt)
        from chatproject.llm import ChatMessage, get_provider

        return get_provider().stream([ChatMessage("user", prompt)])

    async def echo(self, prompt: str) -> None:
        stream_id = str(uuid.uuid4())
        async for item in self.source(prompt):
            if isinstance(item, str):
                frame = {"type": "token", "stream_id": stream_id, "part": "text", "text": item}
                await self.send_json(frame)
        await self.send_json({"type": "status", "stream_id": stream_id, "status": "done"})

    async def disconnect(self, code: int) -> None:
        for task in self.tasks:
            task.cancel()


class ProviderEchoConsumer(EchoConsumer):
    use_provider = True


def _instrument() -> None:
    """Stamp each chunk with its commit, and (demo provider) stamp each token."""
    from channels.layers import get_channel_layer
    from django.conf import settings

    import chatproject.chat.consumers as chat_consumers
    import chatproject.chat.views as chat_views
    from streaming import writer
    from streaming.frames import FRAMES_EVENT

    if settings.LLM_PROVIDER == "demo":
        chat_consumers.get_provider = StampedProvider
        chat_views.get_provider = StampedProvider

    write_round = writer.write_round

    def stamped_write_round(work: Any) -> Any:
        done = write_round(work)
        committed = time.monotonic()
        if len(_COMMITS) > 100_000:
            _COMMITS.clear()
        for write in work.appends:
            _COMMITS[(write.stream_id, write.first_seq)] = committed
        for stream_id, end in work.ends.items():
            _COMMITS[(stream_id, end.first_seq)] = committed
        return done

    writer.write_round = stamped_write_round
    layer = get_channel_layer()
    group_send = layer.group_send
    group_send_many = getattr(layer, "group_send_many", None)

    def stamp(message: dict[str, Any]) -> None:
        if message.get("type") == FRAMES_EVENT:
            chunks = [f for f in message["frames"] if f["type"] == "chunk"]
            if chunks and "bench_commit" not in chunks[0]:
                key = (chunks[0]["stream_id"], chunks[0]["seq"])
                committed = _COMMITS.pop(key, None) or time.monotonic()
                for frame in chunks:
                    frame["bench_commit"] = committed

    async def stamped_group_send(group: str, message: dict[str, Any]) -> None:
        stamp(message)
        await group_send(group, message)

    async def stamped_group_send_many(sends: list[tuple[str, dict[str, Any]]]) -> None:
        for _, message in sends:
            stamp(message)
        await group_send_many(sends)  # type: ignore[misc]

    layer.group_send = stamped_group_send
    if group_send_many is not None:  # the writer's rounds go through it
        layer.group_send_many = stamped_group_send_many


#: stream id → chunk writes (``services.chunks_append`` entries) the writer made for it.
APPENDS: Counter[str] = Counter()


def _count_appends() -> None:
    from streaming import services

    chunks_append = services.chunks_append

    def counted(*, writes: Any) -> dict[str, bool]:
        APPENDS.update(write.stream_id for write in writes)
        return chunks_append(writes=writes)

    services.chunks_append = counted


SQL: Any = None
if os.environ.get("BENCH_INSTRUMENT") == "1":
    _instrument()
if os.environ.get("BENCH_COUNT_SQL") == "1":
    from bench.counters import StatementCounter

    SQL = StatementCounter().__enter__()
    _count_appends()

_echo = EchoConsumer.as_asgi()
_provider_echo = ProviderEchoConsumer.as_asgi()


async def _body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _reply(send: Any, status: int, payload: Any = None) -> None:
    body = b"" if payload is None else json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _stamps(scope: dict[str, Any], receive: Any, send: Any) -> None:
    payload = {"stamps": dict(STAMPS), "calls": dict(CALLS)}
    STAMPS.clear()
    CALLS.clear()
    await _reply(send, 200, payload)


async def _release(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _GATE
    await _body(receive)
    _gate().set()
    _GATE = None  # the next gated prompts wait for the next release
    await _reply(send, 204)


async def _sql(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if SQL is None:
        await _reply(send, 404, {})
        return
    payload = {"write_transactions": SQL.write_transactions, "kinds": SQL.kinds}
    if "appends=1" in scope.get("query_string", b"").decode():
        payload["appends"] = dict(APPENDS)
    await _reply(send, 200, payload)


async def _replay(scope: dict[str, Any], receive: Any, send: Any) -> None:
    from channels.layers import get_channel_layer

    from streaming.frames import chunk_frame, group_event

    request = json.loads(await _body(receive))
    layer = get_channel_layer()
    stream_id = request["stream_id"]
    message = {"id": 0, "role": "assistant", "text": "", "reasoning": "", "stream_id": stream_id,
               "status": "streaming", "client_id": ""}  # fmt: skip
    announce = {"type": "message", "message": message, "driving": False}
    await layer.group_send(
        request["group"], {"type": "chat.message", "frames": [announce], "sender": ""}
    )
    seq = -1
    for seq, chunk in enumerate(request["chunks"]):
        await asyncio.sleep(chunk["delay"])
        frame = chunk_frame(stream_id, seq, "text", chunk["text"])
        frame["bench_commit"] = time.monotonic()
        await layer.group_send(request["group"], group_event([frame]))
    status = {"type": "status", "stream_id": stream_id, "status": "done", "error": None,
              "last_seq": seq, "length": None, "sha256": None, "reasoning_length": None,
              "reasoning_sha256": None, "finish_reason": "stop", "model": None,
              "usage": None}  # fmt: skip
    await layer.group_send(request["group"], group_event([status]))
    await _reply(send, 204)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope.get("path", "")
    instrumented = os.environ.get("BENCH_INSTRUMENT") == "1"
    if scope["type"] == "websocket" and path == "/bench/echo/":
        return await _echo(scope, receive, send)
    if scope["type"] == "websocket" and path == "/bench/echo/llm/":
        return await _provider_echo(scope, receive, send)
    if scope["type"] == "http" and path.startswith("/bench/"):
        if path == "/bench/replay/" and instrumented:
            return await _replay(scope, receive, send)
        if path == "/bench/stamps/":
            return await _stamps(scope, receive, send)
        if path == "/bench/release/":
            return await _release(scope, receive, send)
        if path == "/bench/sql/":
            return await _sql(scope, receive, send)
    return await chat_application(scope, receive, send)


if os.environ.get("BENCH_DEBUG_TASKS") == "1":  # pragma: no cover - debugging aid
    import signal
    import sys

    def _dump(*_: Any) -> None:
        for task in asyncio.all_tasks(asyncio.get_event_loop()):
            task.print_stack(file=sys.stderr)

    signal.signal(signal.SIGUSR1, _dump)
