"""A provider for OpenAI and any OpenAI-compatible streaming chat completions server
(vLLM, Ollama, llama.cpp, LM Studio, OpenRouter, DeepSeek, ...).

It speaks the wire format itself, without the ``openai`` SDK: aiohttp for HTTP (its C
parser), ``SSEDecoder`` for the event stream and orjson for each chunk. The SDK built
pydantic models for every chunk, which cost far more than everything else a token does
here; ``python -m bench.provider_parse`` compares the candidates.

What a stream yields: each answer delta as a plain ``str``; reasoning (``delta.
reasoning_content`` from vLLM and DeepSeek, ``delta.reasoning`` from OpenRouter and
Ollama) as ``Delta(text, part="reasoning")``; then one ``Finish`` with the server's
finish reason (as reported; the driver maps reasons it does not know), the ``model``
the chunks named and the usage (asked for with ``stream_options.include_usage``,
reasoning tokens from ``completion_tokens_details``). A server that reports none of the
three gets no ``Finish`` at all; one that reports some gets ``None`` for the others.

Failures become ``LLMError`` with a sentence a person can read. Retries (``max_retries``,
for connection failures, timeouts before the response, HTTP 408, 409, 429 and 5xx, with
the SDK's backoff and ``Retry-After``) happen only before any delta, so a retried answer
never repeats text. A server that answers HTTP 400 to a request carrying
``stream_options`` is asked once more without it, and never again with it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import logging
import random
import urllib.request
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson

from streaming import Delta, Finish
from streaming.core.deltas import Usage, clean_usage

from .base import ChatMessage, LLMError, StreamItem
from .sse import SSEDecoder

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})  # and every 5xx, as the SDK
_MAX_CONNECTIONS: Final = 1000  # the SDK's limit: answers stream concurrently
_MAX_RETRY_AFTER: Final = 60.0  # seconds; a longer Retry-After falls back to backoff
_DRAIN_SECONDS: Final = 0.1  # reading past [DONE] so the connection can be reused

#: Base URLs whose server refused ``stream_options`` with HTTP 400.
_REFUSES_STREAM_OPTIONS: set[str] = set()

#: Event loop → the aiohttp session shared by that loop's answers.
_SESSIONS: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


def _session() -> aiohttp.ClientSession:
    """The running loop's session, created on first use.

    One session (one connection pool) per event loop is shared by every answer: a pool
    belongs to the loop that opened its connections (tests and ``async_to_sync`` workers
    run other loops), and a client per answer grew the process's native memory without
    giving it back (measured with the SDK's client, which this replaces). Timeouts travel
    with each request, so every provider and configuration shares the loop's session.
    """
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is None:
        for old in [old for old in _SESSIONS if old.is_closed()]:
            _discard(_SESSIONS.pop(old))
        session = _SESSIONS[loop] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=_MAX_CONNECTIONS)
        )
    return session


@functools.cache
def _proxy_for(url: str) -> str | None:
    """The proxy that ``HTTPS_PROXY``/``HTTP_PROXY`` and ``NO_PROXY`` name for ``url``, as
    the SDK honoured them. Read once per URL: aiohttp's ``trust_env`` reads the
    environment again at every request, which costs more than the rest of a request."""
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _discard(session: aiohttp.ClientSession) -> None:
    """Drop a session without awaiting (its loop is closed, or the process is exiting),
    and without aiohttp's "Unclosed client session" errors in the logs."""
    connector = session.connector
    session.detach()
    if connector is not None:
        # close() does this work at once and returns an awaitable we have no loop for.
        connector._close()


@atexit.register
def _discard_all() -> None:
    """At exit, quietly: a server's loop is still open but no longer runs."""
    while _SESSIONS:
        _discard(_SESSIONS.popitem()[1])


@dataclass(slots=True)
class _Progress:
    """How far an answer got, for the error sentence."""

    connected: bool = False  # response headers received
    started: bool = False  # a delta yielded


class _StatusError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class _StreamError(Exception):
    """The server sent an ``{"error": ...}`` object inside the stream."""


class _Unreadable(Exception):
    """A chunk's data is not JSON."""


class OpenAIProvider:
    """Streams chat completions from ``base_url`` (the server's ``/v1`` root) with ``model``.

    ``connect_timeout`` bounds connecting (and waiting for a free pooled connection);
    ``read_timeout`` is the longest silence allowed, before the headers and between
    two reads. Cheap to build: the HTTP session is the loop's (see ``_session``).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        system_prompt: str,
        connect_timeout: float,
        read_timeout: float,
        max_retries: int,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.system_prompt = system_prompt
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_retries = max_retries
        root = base_url.rstrip("/")
        self._url = f"{root}/chat/completions"
        self._models_url = f"{root}/models"
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._headers = {
            **self._auth,
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            # A compressed event stream is buffered by the compressor: tokens arrive late.
            "Accept-Encoding": "identity",
        }
        self._timeout = aiohttp.ClientTimeout(connect=connect_timeout, sock_read=read_timeout)
        self._proxy = _proxy_for(self._url)

    def __repr__(self) -> str:
        # Never the key: reprs end up in logs and tracebacks.
        return f"OpenAIProvider(base_url={self.base_url!r}, model={self.model!r})"

    async def warm_up(self) -> None:
        """Create the loop's session and open a pooled connection to the server with a
        ``GET /models`` (every OpenAI-compatible server has it; the answer is ignored),
        so the first answer skips the connection and TLS handshakes."""
        try:
            async with _session().get(
                self._models_url,
                headers=self._auth,
                proxy=self._proxy,
                timeout=aiohttp.ClientTimeout(total=self.connect_timeout),
            ) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logger.warning("%s did not answer its warm-up request: %r", self, exc)

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[StreamItem, None]:
        """Yield answer text (``str``) and reasoning (``Delta``), then maybe a ``Finish``.

        ``aclose()`` or a cancel while waiting for a delta closes the HTTP response in
        the ``finally`` below, so the server sees the connection end at once.
        """
        progress = _Progress()
        response: aiohttp.ClientResponse | None = None
        silence: _SilenceWatch | None = None
        reason = model = usage = None
        done = False
        try:
            response = await self._respond(messages, progress)
            silence = _SilenceWatch(response, self.read_timeout)
            decoder = SSEDecoder()
            async for data in response.content.iter_any():
                silence.last_read = silence.clock()
                for event in decoder.feed(data):
                    if event.data.startswith(b"[DONE]"):
                        done = True
                        break
                    chunk = _loads(event.data)
                    if not isinstance(chunk, dict):
                        continue
                    if chunk.get("error"):
                        raise _StreamError(chunk["error"])
                    model = chunk.get("model") or model
                    usage = chunk.get("usage") or usage
                    choices = chunk.get("choices")
                    if not choices:  # the usage chunk, or a prompt-filter report
                        continue
                    choice = choices[0]
                    delta = choice.get("delta")
                    if delta:
                        thought = delta.get("reasoning_content") or delta.get("reasoning")
                        if thought and isinstance(thought, str):
                            progress.started = True
                            yield Delta(thought, part="reasoning")
                        text = delta.get("content")
                        if text and isinstance(text, str):
                            progress.started = True
                            yield text
                    reason = choice.get("finish_reason") or reason
                if done:
                    break
            if done:
                await _drain(response)
        except Exception as exc:
            raise self._error(exc, progress) from exc
        finally:
            if silence is not None:
                silence.stop()
            if response is not None:
                response.close()  # at once; a no-op once the body was read to its end
        finish = _finish(reason, model, usage)
        if finish is not None:
            yield finish

    async def _respond(
        self, messages: Sequence[ChatMessage], progress: _Progress
    ) -> aiohttp.ClientResponse:
        """POST the request until a response with a good status; retry as documented."""
        conversation = self._conversation(messages)
        with_usage = self.base_url not in _REFUSES_STREAM_OPTIONS
        retries = 0
        while True:
            body: dict[str, Any] = {"model": self.model, "messages": conversation, "stream": True}
            if with_usage:
                body["stream_options"] = {"include_usage": True}
            try:
                response = await _session().post(
                    # json.dumps escapes what orjson refuses (lone surrogates) into ASCII.
                    self._url,
                    data=json.dumps(body).encode(),
                    headers=self._headers,
                    proxy=self._proxy,
                    timeout=self._timeout,
                )
            except aiohttp.ClientConnectionError:
                if retries >= self.max_retries:
                    raise
                retries += 1
                await asyncio.sleep(_retry_delay(retries, None))
                continue
            if response.status < 400:
                progress.connected = True
                if "stream_options" not in body and self.base_url not in _REFUSES_STREAM_OPTIONS:
                    _REFUSES_STREAM_OPTIONS.add(self.base_url)
                    logger.info("%s refused stream_options: asking without them", self)
                return response
            detail = await _detail(response)
            if response.status == 400 and with_usage:
                with_usage = False
                continue
            if retries < self.max_retries and (
                response.status in RETRYABLE_STATUSES or response.status >= 500
            ):
                retries += 1
                await asyncio.sleep(_retry_delay(retries, response.headers))
                continue
            raise _StatusError(response.status, detail)

    def _conversation(self, messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
        """System prompt first, then the conversation in order."""
        payload = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        payload.extend({"role": m.role, "content": m.content} for m in messages)
        return payload

    def _error(self, exc: Exception, progress: _Progress) -> LLMError:
        """Translate an exception into a sentence for the person waiting for the answer."""
        where = "mid-answer" if progress.started else "before answering"
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            message = (
                f"Timed out connecting to the language model (after {self.connect_timeout:g} s)."
            )
        elif isinstance(exc, aiohttp.ServerTimeoutError):
            message = f"The language model timed out {where} (no data for {self.read_timeout:g} s)."
        elif isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            if progress.connected:
                message = f"The connection to the language model was lost {where}."
            else:
                message = "Could not connect to the language model."
        elif isinstance(exc, aiohttp.InvalidURL):
            message = "Could not connect to the language model."
        elif isinstance(exc, _StatusError) and exc.status == 429:
            message = "The language model is rate limited (HTTP 429). Try again shortly."
        elif isinstance(exc, _StatusError):
            message = f"The language model returned HTTP {exc.status}."
        elif isinstance(exc, _StreamError):
            message = f"The language model reported an error {where}."
        elif isinstance(exc, _Unreadable):
            message = f"The language model sent an unreadable reply {where}."
        else:
            logger.error("Unexpected error from %s", self, exc_info=exc)
            return LLMError(f"Unexpected error from the language model {where}.")
        logger.warning("%s (%s): %r, caused by %r", message, self, exc, exc.__cause__)
        return LLMError(message)


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # orjson refuses lone surrogates (\ud800), which JSON allows
            return json.loads(data)
        except ValueError as exc:
            raise _Unreadable(data[:200]) from exc


class _SilenceWatch:
    """The read timeout between two reads of a response's body, for the price of one
    clock read a read.

    aiohttp's own (``sock_read``) cancels and schedules a timer at every read, a token
    each: a share of a process's CPU as large as the SSE parse. Here one timer a
    stream fires at the last read's deadline and, while reads keep coming, schedules
    itself at the next one; when the silence has lasted, the body's reader gets
    aiohttp's own timeout error. aiohttp's timer still bounds the wait for the headers,
    and is turned off here once they arrived.
    """

    __slots__ = ("_content", "_handle", "_loop", "_seconds", "clock", "last_read")

    def __init__(self, response: aiohttp.ClientResponse, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.clock = self._loop.time
        self.last_read = self.clock()
        self._seconds = seconds
        self._content = response.content
        self._handle: asyncio.TimerHandle | None = None
        if seconds and response.connection is not None:
            response.connection.protocol.read_timeout = None  # type: ignore[union-attr]
            self._handle = self._loop.call_at(self.last_read + seconds, self._check)

    def _check(self) -> None:
        deadline = self.last_read + self._seconds
        if self.clock() < deadline:
            self._handle = self._loop.call_at(deadline, self._check)
            return
        self._handle = None
        self._content.set_exception(aiohttp.SocketTimeoutError("No data for the read timeout"))

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _finish(reason: Any, model: Any, usage: Any) -> Finish | None:
    """The Finish for what the server reported, or None when it reported nothing."""
    reason = reason if isinstance(reason, str) else None
    model = model if isinstance(model, str) and model else None
    counts = _usage(usage)
    if reason is None and model is None and counts is None:
        return None
    return Finish(finish_reason=reason, model=model, usage=counts)


def _usage(reported: Any) -> Usage | None:
    if not isinstance(reported, Mapping):
        return None
    details = reported.get("completion_tokens_details")
    return clean_usage(
        {
            "prompt_tokens": reported.get("prompt_tokens"),
            "completion_tokens": reported.get("completion_tokens"),
            "reasoning_tokens": (
                details.get("reasoning_tokens") if isinstance(details, Mapping) else None
            ),
        }
    )


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows [DONE] (normally just the end of the body), briefly, so the
    connection goes back to the pool instead of being closed."""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            await response.content.read()


async def _detail(response: aiohttp.ClientResponse) -> str:
    """The start of an error response's body, for the log (never for the user)."""
    try:
        async with asyncio.timeout(_DRAIN_SECONDS * 10):
            return (await response.content.read(2000)).decode("utf-8", "replace")
    except (TimeoutError, aiohttp.ClientError):
        return ""
    finally:
        response.release()


def _retry_delay(retry: int, headers: Mapping[str, str] | None) -> float:
    """The server's ``Retry-After`` (seconds, up to a minute), else the SDK's backoff:
    0.5 s doubling up to 8 s, less up to a quarter of jitter."""
    with contextlib.suppress(TypeError, ValueError):
        seconds = float((headers or {}).get("Retry-After", ""))
        if 0 <= seconds <= _MAX_RETRY_AFTER:
            return seconds
    return min(0.5 * 2 ** (retry - 1), 8.0) * (1 - 0.25 * random.random())
