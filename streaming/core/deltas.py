"""What a text source yields: deltas of a stream's two parts, then how it finished.

A stream's text has two parts: ``text`` (the answer) and ``reasoning`` (the model's
thinking, for servers that stream it). A source yields plain ``str`` (answer text) or
:class:`Delta`, and may end with one :class:`Finish` carrying what the LLM server
reported. Pure Python, so providers can build them without Django.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

Part = Literal["text", "reasoning"]
TEXT: Final = "text"
REASONING: Final = "reasoning"
PARTS: Final[tuple[Part, ...]] = (TEXT, REASONING)

#: The finish reasons an LLM server may report; the stream's own final statuses
#: (cancelled, error, timeout) are the others a final stream can record.
SERVER_FINISH_REASONS: Final = frozenset({"stop", "length", "content_filter"})
USAGE_FIELDS: Final = ("prompt_tokens", "completion_tokens", "reasoning_tokens")

Usage = dict[str, int | None]


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of one part of the stream, as the source produced it."""

    text: str
    part: Part = TEXT

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, not {self.part!r}")
        if not isinstance(self.text, str):
            raise TypeError(f"Delta text must be a str, not {type(self.text).__name__}")


@dataclass(frozen=True, slots=True)
class Finish:
    """What the LLM server reported at the end; every field may be unknown (None)."""

    finish_reason: str | None = None
    model: str | None = None
    usage: Mapping[str, Any] | None = None


def as_delta(item: str | Delta) -> Delta:
    """A source's item as a Delta: a plain string is answer text."""
    if isinstance(item, Delta):
        return item
    if isinstance(item, str):
        return Delta(item)
    raise TypeError(f"a delta is a str or a Delta, not {type(item).__name__}")


def clean_usage(usage: Mapping[str, Any] | None) -> Usage | None:
    """The three counts the contract names, each a non-negative int or None; None when
    the server reported none of them (so "no usage" is stored as null, not zeros)."""
    if not usage:
        return None
    counts: Usage = {}
    for name in USAGE_FIELDS:
        value = usage.get(name)
        valid = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        counts[name] = value if valid else None
    return counts if any(v is not None for v in counts.values()) else None


def clean_model(model: Any, *, max_length: int = 200) -> str:
    """The model name a server reported, as stored ("" when unknown)."""
    return model[:max_length] if isinstance(model, str) else ""


def final_finish_reason(status: str, reported: str | None) -> str:
    """What a final stream records as its finish reason: the server's (stop, length,
    content_filter) for a stream that ended by itself, else the stream's own status.
    An unknown reason from a server that ended normally is recorded as ``stop``."""
    if status != "done":
        return status
    return reported if reported in SERVER_FINISH_REASONS else "stop"
