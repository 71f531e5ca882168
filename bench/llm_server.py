"""An OpenAI-compatible streaming chat-completions server for the benchmarks, in a
process of its own (``python -m bench.llm_server`` prints its port), so that its CPU is
not the measured server's.

``POST /v1/chat/completions`` answers the last user message as a benchmark prompt
(``bench.text.prompt_tokens``: the demo answer's tokens, ``pace=N`` tokens per second,
0 = as fast as the socket takes them, concurrent answers taking turns token by token),
one ``chat.completion.chunk`` event per token, shaped field for field like OpenAI's,
then a finish chunk, the usage chunk when asked (``stream_options.include_usage``) and
``[DONE]``. ``GET /v1/models`` lists one model (the provider's warm-up).
``GET /bench/stamps`` returns, and forgets, when each token of each prompt was written
(``time.monotonic()``, comparable across the processes of one machine) and how many
requests each prompt got.

A raw asyncio server writing prebuilt bytes: each event costs it a few microseconds, so
it keeps up with hundreds of streams beside the server it feeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from typing import Any

from bench.text import prompt_tokens

MODEL = "bench-model"
_HEAD = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"' + MODEL.encode() + b'","system_fingerprint":"fp_bench","choices":[{"index":0,'
)
_ROLE = _HEAD + b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
_STOP = _HEAD + b'"delta":{},"logprobs":null,"finish_reason":"stop"}]}'
_DONE = b"data: [DONE]"

#: prompt → write time of each token of its latest request; prompt → requests.
STAMPS: dict[str, list[float]] = {}
REQUESTS: Counter[str] = Counter()


def _chunk(data: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    event = data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _token_event(token: str) -> bytes:
    content = json.dumps(token, ensure_ascii=False).encode()
    return _chunk(
        _HEAD + b'"delta":{"content":' + content + b'},"logprobs":null,"finish_reason":null}]}'
    )


def _usage_event(tokens: int) -> bytes:
    usage = {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3}
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
            "model": MODEL, "choices": [], "usage": usage}  # fmt: skip
    return _chunk(b"data: " + json.dumps(body, separators=(",", ":")).encode())


def _respond(writer: asyncio.StreamWriter, status: str, body: bytes, kind: str) -> None:
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def _completion(writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
    prompt = next(
        (m.get("content", "") for m in reversed(request.get("messages", []))
         if m.get("role") == "user"),
        "",
    )  # fmt: skip
    REQUESTS[prompt] += 1
    pace, tokens = prompt_tokens(prompt)
    events = [_token_event(token) for token in tokens]
    stamps = STAMPS[prompt] = []
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(_ROLE)
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    for index, event in enumerate(events):
        if pace > 0 and index:
            delay = started + index / pace - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        stamps.append(time.monotonic())
        writer.write(event)
        await writer.drain()
        if pace <= 0:
            # Every concurrent answer gets its next token in turn, as a model server's
            # decoding steps serve all its requests, rather than one answer's whole
            # text filling its socket first.
            await asyncio.sleep(0)
    tail = _chunk(_STOP)
    if (request.get("stream_options") or {}).get("include_usage"):
        tail += _usage_event(len(tokens))
    writer.write(tail + _chunk(_DONE) + b"0\r\n\r\n")
    await writer.drain()


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Requests of one keep-alive connection, one after the other."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            if method == "POST" and path.endswith("/chat/completions"):
                await _completion(writer, json.loads(body))
            elif path.endswith("/models"):
                models = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
                _respond(writer, "200 OK", json.dumps(models).encode(), "application/json")
            elif path == "/bench/stamps":
                payload = {"stamps": STAMPS, "requests": dict(REQUESTS)}
                _respond(writer, "200 OK", json.dumps(payload).encode(), "application/json")
                STAMPS.clear()
                REQUESTS.clear()
            else:
                _respond(writer, "404 Not Found", b"{}", "application/json")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve() -> None:
    prompt_tokens("warm up")  # its imports, now rather than in the first answer's time
    server = await asyncio.start_server(_serve_one, "127.0.0.1", 0, backlog=2048)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    sys.exit(0)
