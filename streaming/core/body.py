"""What a reader gets of a stream: its persisted text and reasoning, and its status."""

from __future__ import annotations

from dataclasses import dataclass

from streaming.core.deltas import Usage
from streaming.core.lifecycle import FINAL, Status


@dataclass(frozen=True, slots=True)
class StreamBody:
    """A stream as persisted. With ``snapshot`` the text and reasoning are whole up to
    ``last_seq`` and replace what a reader had; otherwise they continue after the
    ``after`` asked for. ``finish_reason``, ``model`` and ``usage`` are None until the
    stream is final (and where the LLM server reported none)."""

    text: str
    reasoning: str
    status: str
    last_seq: int
    error: str | None
    snapshot: bool = False
    finish_reason: str | None = None
    model: str | None = None
    usage: Usage | None = None

    @property
    def is_final(self) -> bool:
        return Status(self.status) in FINAL
