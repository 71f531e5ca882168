"""The ASGI application every benchmark daphne serves: chatproject's application,
untouched, plus what the benchmarks need beside it.

* ``ws /bench/echo/``: the raw baseline. On a ``prompt`` frame it sends the very token
  frames the chat's driver would send for that prompt (the demo answer's tokens, same
  sizes, same pace), straight to the socket: no database, no batching, no channel layer.
* ``GET /bench/stamps/``: when each token was produced (``time.monotonic()``, which is
  CLOCK_MONOTONIC and so comparable across processes of one machine), by prompt, for
  both the echo and the chat's driver; the benchmark subtracts it from the arrival time.
* ``POST /bench/replay/`` (with ``BENCH_INSTRUMENT=1``): the fanout baseline. Sends the
  given chunk frames by plain ``group_send`` from this process, with the given spacing,
  each stamped with ``bench_commit`` just before its ``group_send``.
* With ``BENCH_INSTRUMENT=1``, two measuring points are put in the chat's path. The
  provider becomes the demo text source with those stamps (paced by ``pace=N`` and cut
  at ``tokens=N`` in the prompt), and each ``chunk`` frame carries ``bench_commit``, the
  time its announcement starts, right after its commit (where the component announces
  it: the driver after its write returns, or ``transaction.on_commit``). Everything
  else (consumer, driver, batching, writes, fanout) is the product's.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

from asgiref.sync import async_to_sync
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from bench.helpers import prompt_tokens
from chatproject.asgi import application as chat_application

#: prompt → production time of each of its tokens, until fetched from /bench/stamps/.
STAMPS: dict[str, list[float]] = {}


async def stamped_tokens(prompt: str) -> AsyncIterator[str]:
    """The tokens of ``prompt_tokens``, paced like ``DemoProvider``, each stamped."""
    pace, tokens = prompt_tokens(prompt)
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


class EchoConsumer(AsyncJsonWebsocketConsumer):
    """The raw websocket baseline: tokens from a task of their own, like the driver."""

    async def connect(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        await self.accept()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "prompt":
            task = asyncio.create_task(self.echo(str(content.get("text", ""))))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def echo(self, prompt: str) -> None:
        stream_id = str(uuid.uuid4())
        async for token in stamped_tokens(prompt):
            await self.send_json({"type": "token", "stream_id": stream_id, "text": token})
        await self.send_json({"type": "status", "stream_id": stream_id, "status": "done"})

    async def disconnect(self, code: int) -> None:
        for task in self.tasks:
            task.cancel()


def _stamp(frames_: list[dict[str, Any]]) -> None:
    stamp = time.monotonic()
    for frame in frames_:
        if frame["type"] == "chunk":
            frame.setdefault("bench_commit", stamp)


def _instrument() -> None:
    from django.db import transaction

    import chatproject.chat.consumers as chat_consumers
    from streaming import driver, frames, services

    def stamped_announce_on_commit(group: str, to_send: list[dict[str, Any]]) -> None:
        def announce() -> None:
            _stamp(to_send)
            async_to_sync(frames.aannounce)(group, to_send)

        transaction.on_commit(announce)

    chat_consumers.get_provider = StampedProvider
    services.announce_on_commit = stamped_announce_on_commit
    if hasattr(driver, "aannounce"):  # the driver announces its chunks after the commit
        announce_after_commit = driver.aannounce

        async def stamped_aannounce(group: str, to_send: list[dict[str, Any]]) -> None:
            _stamp(to_send)
            await announce_after_commit(group, to_send)

        driver.aannounce = stamped_aannounce


if os.environ.get("BENCH_INSTRUMENT") == "1":
    _instrument()

_echo = EchoConsumer.as_asgi()


async def _stamps(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = json.dumps(STAMPS).encode()
    STAMPS.clear()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _replay(scope: dict[str, Any], receive: Any, send: Any) -> None:
    from channels.layers import get_channel_layer

    from streaming.frames import chunk_frame, group_event

    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body)
    layer = get_channel_layer()
    for seq, chunk in enumerate(request["chunks"], start=request["first_seq"]):
        await asyncio.sleep(chunk["delay"])
        frame = chunk_frame(request["stream_id"], seq, chunk["text"])
        frame["bench_commit"] = time.monotonic()
        await layer.group_send(request["group"], group_event([frame]))
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope.get("path", "")
    instrumented = os.environ.get("BENCH_INSTRUMENT") == "1"
    if scope["type"] == "http" and path == "/bench/replay/" and instrumented:
        return await _replay(scope, receive, send)
    if scope["type"] == "websocket" and path == "/bench/echo/":
        return await _echo(scope, receive, send)
    if scope["type"] == "http" and path == "/bench/stamps/":
        return await _stamps(scope, receive, send)
    return await chat_application(scope, receive, send)
