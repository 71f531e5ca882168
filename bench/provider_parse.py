"""``python -m bench.provider_parse``: what reading one streamed LLM chunk costs, per client.

Every candidate reads the same answer from the same local OpenAI-compatible server and
must join it to the same text. The server runs in a process of its own (this script
started with ``--serve``), so its CPU is not counted; it is a raw asyncio server that
writes prebuilt chunk events, one HTTP chunk each, as fast as the socket takes them.

Two passes, in one run so the figures compare:

* as fast as possible: ``--chunks`` chunks a stream; wall-clock µs per chunk, chunks per
  second, and this process's CPU µs per chunk (the best of ``--repeats`` streams);
* paced: ``--paced-chunks`` chunks one millisecond apart, so that nearly every network
  read holds one event, as with a real model; CPU µs per chunk, the cost a chunk adds to
  the web process that drives the answer.

The request column is the median time from the call to the first chunk on a warm client
(20 short streams): what a client adds before any token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import openai
import orjson

from chatproject.llm import ChatMessage
from chatproject.llm.openai_provider import OpenAIProvider
from chatproject.llm.sse import SSEDecoder

MESSAGES = [{"role": "user", "content": "Count for me."}]
MODEL = "bench-model"
PACE_SECONDS = 0.001
REQUEST_SAMPLES = 20

# --- the server (a process of its own) -----------------------------------------------


def _token(index: int) -> str:
    # Mostly short ASCII words, as a model's tokens are, with multi-byte text among them.
    return "é " if index % 10 == 9 else f"w{index % 7} "


def expected_text(chunks: int) -> str:
    return "".join(_token(i) for i in range(chunks))


def _event(payload: dict[str, Any]) -> bytes:
    data = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """A chat.completion.chunk shaped like OpenAI's, field for field."""
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _events(chunks: int) -> list[bytes]:
    usage = {"prompt_tokens": 3, "completion_tokens": chunks, "total_tokens": chunks + 3}
    return [
        _event(_chunk({"role": "assistant", "content": ""})),
        *(_event(_chunk({"content": _token(i)})) for i in range(chunks)),
        _event(_chunk({}, "stop")),
        _event({**_chunk({}), "choices": [], "usage": usage}),
        _event_raw(b"data: [DONE]\n\n"),
    ]


def _event_raw(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer requests on one keep-alive connection; the path says how: /fast/N or /paced/N."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            _, mode, count, *_ = request_line.split(" ")[1].split("/")
            events = _events(int(count))
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            if mode == "paced":
                started = time.perf_counter()
                for index, event in enumerate(events):
                    writer.write(event)
                    await writer.drain()
                    delay = started + index * PACE_SECONDS - time.perf_counter()
                    await asyncio.sleep(max(delay, 0))
            else:
                for start in range(0, len(events), 256):
                    writer.write(b"".join(events[start : start + 256]))
                    await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve() -> None:
    server = await asyncio.start_server(_serve_one, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# --- the candidates ------------------------------------------------------------------


def _content(payload: bytes, loads: Callable[[bytes], Any]) -> str | None:
    """The answer text of one chunk's data, as every fast candidate reads it."""
    chunk = loads(payload)
    choices = chunk.get("choices")
    if choices:
        return choices[0].get("delta", {}).get("content") or None
    return None


Stream = Callable[[str], AsyncIterator[str]]


async def _sdk(client: openai.AsyncOpenAI, path: str) -> AsyncIterator[str]:
    client = client.with_options(base_url=f"{client.base_url}{path}/v1")
    chunks = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    async with chunks:
        async for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


async def _sdk_raw_lines(client: openai.AsyncOpenAI, path: str) -> AsyncIterator[str]:
    client = client.with_options(base_url=f"{client.base_url}{path}/v1")
    request = client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    async with request as response:
        async for line in response.iter_lines():
            if line.startswith("data:"):
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                text = _content(payload.encode(), orjson.loads)
                if text:
                    yield text


async def _httpx2_decoder(
    client: httpx2.AsyncClient, url: str, loads: Callable[[bytes], Any]
) -> AsyncIterator[str]:
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "stream": True})
    async with client.stream("POST", url, content=body) as response:
        decoder = SSEDecoder()
        async for data in response.aiter_bytes():
            for event in decoder.feed(data):
                if event.data == b"[DONE]":
                    return
                text = _content(event.data, loads)
                if text:
                    yield text


async def _httpx2_sse(client: httpx2.AsyncClient, url: str) -> AsyncIterator[str]:
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    async with client.sse(url, method="POST", json=body) as source:
        async for event in source:
            if event.data == "[DONE]":
                return
            text = _content(event.data.encode(), orjson.loads)
            if text:
                yield text


async def _aiohttp_decoder(session: aiohttp.ClientSession, url: str) -> AsyncIterator[str]:
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "stream": True})
    headers = {"Content-Type": "application/json"}
    async with session.post(url, data=body, headers=headers) as response:
        decoder = SSEDecoder()
        async for data in response.content.iter_any():
            for event in decoder.feed(data):
                if event.data == b"[DONE]":
                    return
                text = _content(event.data, orjson.loads)
                if text:
                    yield text


async def _provider(provider: OpenAIProvider) -> AsyncIterator[str]:
    async for item in provider.stream([ChatMessage("user", "Count for me.")]):
        if isinstance(item, str):
            yield item


@dataclass
class Candidate:
    name: str
    open: Callable[[str], Awaitable[tuple[Stream, Callable[[], Awaitable[None]]]]]


async def _open_sdk(base: str, raw: bool) -> tuple[Stream, Callable[[], Awaitable[None]]]:
    client = openai.AsyncOpenAI(base_url=base, api_key="bench", max_retries=0)
    read = _sdk_raw_lines if raw else _sdk
    return (lambda path: read(client, path)), client.close


async def _open_httpx2(base: str, how: str) -> tuple[Stream, Callable[[], Awaitable[None]]]:
    client = httpx2.AsyncClient(timeout=httpx2.Timeout(60, connect=10))
    loads = json.loads if how == "json" else orjson.loads

    def read(path: str) -> AsyncIterator[str]:
        url = f"{base}{path}/v1/chat/completions"
        return _httpx2_sse(client, url) if how == "sse" else _httpx2_decoder(client, url, loads)

    return read, client.aclose


async def _open_aiohttp(base: str) -> tuple[Stream, Callable[[], Awaitable[None]]]:
    # Timeouts as every candidate has them: a read timeout re-arms a timer at each read.
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(connect=10, sock_read=60))
    return (lambda path: _aiohttp_decoder(session, f"{base}{path}/v1/chat/completions")), (
        session.close
    )


async def _open_provider(base: str) -> tuple[Stream, Callable[[], Awaitable[None]]]:
    def read(path: str) -> AsyncIterator[str]:
        provider = OpenAIProvider(
            base_url=f"{base}{path}/v1",
            api_key="",
            model=MODEL,
            system_prompt="",
            connect_timeout=10,
            read_timeout=60,
            max_retries=0,
        )
        return _provider(provider)

    async def close() -> None:
        """The provider's clients live as long as the loop; nothing to close here."""

    return read, close


CANDIDATES = [
    Candidate("a. openai SDK, pydantic chunks (before)", lambda b: _open_sdk(b, raw=False)),
    Candidate("b. SDK raw response, iter_lines + orjson", lambda b: _open_sdk(b, raw=True)),
    Candidate("c. httpx2 client.sse() + orjson", lambda b: _open_httpx2(b, "sse")),
    Candidate("c. httpx2 + SSEDecoder + json", lambda b: _open_httpx2(b, "json")),
    Candidate("c. httpx2 + SSEDecoder + orjson", lambda b: _open_httpx2(b, "orjson")),
    Candidate("d. aiohttp + SSEDecoder + orjson", _open_aiohttp),
    Candidate("OpenAIProvider.stream (chosen)", _open_provider),
]


# --- measuring -----------------------------------------------------------------------


@dataclass
class Result:
    name: str
    wall_us: float
    cpu_us: float
    paced_cpu_us: float
    request_ms: float


async def _read(stream: Stream, path: str, chunks: int) -> tuple[float, float]:
    """Read one stream; check its text; return its wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    text = "".join([piece async for piece in stream(path)])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if text != expected_text(chunks):
        raise AssertionError(f"{path}: the text read is not the text sent")
    return wall, cpu


async def _first_chunk(stream: Stream) -> float:
    started = time.perf_counter()
    iterator = stream("/fast/10")
    await anext(iterator)
    took = time.perf_counter() - started
    async for _ in iterator:
        pass
    return took


async def measure(candidate: Candidate, base: str, args: argparse.Namespace) -> Result:
    stream, close = await candidate.open(base)
    try:
        await _read(stream, "/fast/50", 50)  # connection, imports, caches: all warm
        fast = [
            await _read(stream, f"/fast/{args.chunks}", args.chunks) for _ in range(args.repeats)
        ]
        paced = await _read(stream, f"/paced/{args.paced_chunks}", args.paced_chunks)
        request = statistics.median([await _first_chunk(stream) for _ in range(REQUEST_SAMPLES)])
    finally:
        await close()
    return Result(
        candidate.name,
        wall_us=min(wall for wall, _ in fast) / args.chunks * 1e6,
        cpu_us=min(cpu for _, cpu in fast) / args.chunks * 1e6,
        paced_cpu_us=paced[1] / args.paced_chunks * 1e6,
        request_ms=request * 1e3,
    )


def table(results: list[Result], args: argparse.Namespace) -> str:
    header = (
        f"{'candidate':<44} {'µs/chunk':>9} {'chunks/s':>10} {'CPU µs':>8} "
        f"{'paced CPU µs':>13} {'request ms':>11}"
    )
    lines = [
        f"{args.chunks:,} chunks as fast as possible (best of {args.repeats}); "
        f"{args.paced_chunks:,} paced 1 ms apart",
        header,
        "-" * len(header),
    ]
    for r in results:
        lines.append(
            f"{r.name:<44} {r.wall_us:>9.1f} {1e6 / r.wall_us:>10,.0f} {r.cpu_us:>8.1f} "
            f"{r.paced_cpu_us:>13.1f} {r.request_ms:>11.2f}"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace, base: str) -> list[Result]:
    results = []
    for candidate in CANDIDATES:
        if args.only and not any(word in candidate.name for word in args.only):
            continue
        print(f"measuring {candidate.name} ...", file=sys.stderr, flush=True)
        results.append(await measure(candidate, base, args))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.provider_parse", description=__doc__)
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--paced-chunks", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", help="candidates whose name holds one of these")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve())
        return 0
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.provider_parse", "--serve"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        print(table(asyncio.run(run(args, base)), args))
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
