"""A provider for OpenAI and any OpenAI-compatible chat completions server.

Uses the official SDK (``openai.AsyncOpenAI``, on ``httpx2``) and turns every failure
into an ``LLMError`` whose text can be shown to the user as is.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any, cast

import openai

from .base import ChatMessage, LLMError

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

logger = logging.getLogger(__name__)

# The SDK refuses an empty key; servers on loopback (llama.cpp, vLLM, Ollama) want none.
_PLACEHOLDER_API_KEY = "none"

#: Event loop → configuration → the SDK client shared by that loop's answers.
_CLIENTS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[Any, ...], openai.AsyncOpenAI]
] = weakref.WeakKeyDictionary()


class OpenAIProvider:
    """Streams chat completions from ``base_url`` with ``model``.

    One SDK client per event loop and configuration is shared by every answer: an
    ``httpx2`` pool belongs to the loop that opened its connections (tests and
    ``async_to_sync`` workers run other loops), and a client per answer costs native
    memory that is not given back (measured: 63 → 150 MB RSS over 200 answers, against
    63 → 64 MB shared). An aborted answer closes its own response, so the server still
    sees the connection end at once.
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
        self._api_key = api_key or _PLACEHOLDER_API_KEY

    def __repr__(self) -> str:
        # Never the key: reprs end up in logs and tracebacks.
        return f"OpenAIProvider(base_url={self.base_url!r}, model={self.model!r})"

    def _client(self) -> openai.AsyncOpenAI:
        key = (
            self.base_url,
            self._api_key,
            self.read_timeout,
            self.connect_timeout,
            self.max_retries,
        )
        clients = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
        if key not in clients:
            clients[key] = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=self._api_key,
                # read: the longest silence allowed between two bytes (also the wait for
                # the response headers); connect: the TCP/TLS handshake.
                timeout=openai.Timeout(self.read_timeout, connect=self.connect_timeout),
                # Explicit: the SDK's default of 2 retries delays the error a user waits for.
                max_retries=self.max_retries,
            )
        return clients[key]

    def _payload(self, messages: Sequence[ChatMessage]) -> list[ChatCompletionMessageParam]:
        """System prompt first, then the conversation in order."""
        payload: list[dict[str, Any]] = []
        if self.system_prompt:
            payload.append({"role": "system", "content": self.system_prompt})
        payload.extend({"role": m.role, "content": m.content} for m in messages)
        return cast("list[ChatCompletionMessageParam]", payload)

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        """Yield each non-empty content delta; raise ``LLMError`` on any failure.

        ``aclose()`` or a cancel while waiting for a delta unwinds the ``async with``
        block, which closes the HTTP response, so the server sees the connection end at
        once.
        """
        connected = started = False  # headers received / first text yielded
        try:
            response = await self._client().chat.completions.create(
                model=self.model,
                messages=self._payload(messages),
                stream=True,
            )
            connected = True
            async with response as chunks:
                async for chunk in chunks:
                    if not chunk.choices:  # e.g. a usage or prompt-filter chunk
                        continue
                    text = chunk.choices[0].delta.content
                    if text:
                        started = True
                        yield text
        except LLMError:
            raise
        except Exception as exc:
            raise self._error(exc, connected=connected, started=started) from exc

    def _error(self, exc: Exception, *, connected: bool, started: bool) -> LLMError:
        """Translate an SDK (or unexpected) exception into a message for the user."""
        where = "mid-answer" if started else "before answering"
        if isinstance(exc, openai.APITimeoutError):
            message = f"The language model timed out {where} (no data for {self.read_timeout:g} s)."
            if _caused_by_connect(exc):
                message = (
                    "Timed out connecting to the language model "
                    f"(after {self.connect_timeout:g} s)."
                )
        elif isinstance(exc, openai.APIConnectionError):
            if connected:
                message = f"The connection to the language model was lost {where}."
            else:
                message = "Could not connect to the language model."
        elif isinstance(exc, openai.RateLimitError):
            message = "The language model is rate limited (HTTP 429). Try again shortly."
        elif isinstance(exc, openai.APIStatusError):
            message = f"The language model returned HTTP {exc.status_code}."
        elif isinstance(exc, openai.APIError):
            # e.g. an {"error": ...} event inside the stream; its text is the server's.
            message = f"The language model reported an error {where}."
        else:
            message = f"Unexpected error from the language model {where}."
        if isinstance(exc, openai.OpenAIError):
            logger.warning(
                "%s (model %s at %s): %r, caused by %r",
                message,
                self.model,
                self.base_url,
                exc,
                exc.__cause__,
            )
        else:
            logger.error("%s (model %s at %s)", message, self.model, self.base_url, exc_info=exc)
        return LLMError(message)


def _caused_by_connect(exc: BaseException) -> bool:
    """Whether a timeout happened while connecting rather than while waiting for data."""
    cause = exc.__cause__
    while cause is not None:
        if type(cause).__name__ in {"ConnectTimeout", "PoolTimeout"}:
            return True
        cause = cause.__cause__
    return False
