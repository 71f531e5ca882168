"""The provider contract shared by the chat code and every LLM backend.

The rest of the project only sees ``ChatMessage``, ``LLMError``, ``LLMProvider`` and the
items a stream yields (``str``, ``Delta``, ``Finish`` from ``streaming``): a backend can
change (demo, OpenAI-compatible server) without the streaming code learning about HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from streaming import Delta, Finish

#: What a provider's stream yields: answer text as a plain ``str`` (the cheapest),
#: reasoning as ``Delta(text, part="reasoning")``, and at most one ``Finish``, last.
StreamItem = str | Delta | Finish


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation, in the order the model should read it."""

    role: str  # "system" | "user" | "assistant"
    content: str


class LLMError(Exception):
    """The one error kind providers raise.

    Its ``str()`` is a short sentence fit to show the person waiting for the answer: no
    traceback, no API key, no library class names. The original exception, when there is
    one, is kept as ``__cause__`` for logs.
    """


@runtime_checkable
class LLMProvider(Protocol):
    """Something that turns a conversation into a stream of answer and reasoning deltas."""

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        """Return an async generator of deltas for ``messages``, then maybe one Finish.

        The caller may stop early with ``await gen.aclose()`` or by cancelling the task
        awaiting the next delta; either must close the upstream HTTP response so the
        server stops generating (and billing) at once. Failures surface as ``LLMError``.
        """
        ...

    async def warm_up(self) -> None:
        """Get ready for a first answer as fast as later ones (call it at process start,
        in the loop that will stream): clients, pools, a connection. Never raises."""
        ...
