"""The contract's invariants, checked at every load a benchmark runs: a regression is a
bug, not a slower number.

A ``StreamCheck`` is one client's view of one stream (a driver socket, a viewer socket,
an SSE reader), built from its frames as the contract says a client builds it: tokens
joined, chunks in ``seq`` order with none missing and none twice, a final status whose
``length`` and ``sha256`` match. ``Violations`` collects what broke, over every stream
and reader of a section, with the first examples; ``database_check`` compares the
database (the stream row, its chunks, the chat message) with the text the source made.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

FINAL = frozenset({"done", "error", "cancelled", "timeout"})
EXAMPLES = 5


@dataclass(slots=True)
class StreamCheck:
    """What one client saw of one stream, and what was wrong with it."""

    who: str
    tokens: list[str] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)
    last_seq: int = -1
    final: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "token":
            self.tokens.append(frame["text"])
        elif kind == "chunk":
            self.chunk(frame["seq"], frame["text"])
        elif kind == "snapshot":
            self.chunks, self.last_seq = [frame["text"]], frame["last_seq"]
        elif kind == "status" and frame["status"] in FINAL:
            self.final = frame

    def chunk(self, seq: int, text: str) -> None:
        if seq <= self.last_seq:
            self.problems.append(f"duplicate: chunk {seq} after {self.last_seq}")
            return
        if seq != self.last_seq + 1:
            self.problems.append(f"gap: chunk {seq} after {self.last_seq}")
        self.chunks.append(text)
        self.last_seq = seq

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def verify(self, expected: str | None, *, tokens: bool, chunks: bool = True) -> None:
        """After the stream ended: the final status came, said ``done`` and matches what
        arrived; the tokens (a driver) and the chunks are exactly ``expected``."""
        if self.final is None:
            self.problems.append("final status not delivered")
        elif self.final["status"] != "done":
            self.problems.append(f"ended {self.final['status']}: {self.final.get('error')}")
        if tokens and expected is not None and "".join(self.tokens) != expected:
            self.problems.append(
                f"token text differs ({len(''.join(self.tokens))} of {len(expected)} chars)"
            )
        if not chunks:
            return
        text = self.text
        if expected is not None and text != expected:
            self.problems.append(f"chunk text differs ({len(text)} of {len(expected)} chars)")
        final = self.final
        if final is not None and final.get("sha256") is not None:
            digest = hashlib.sha256(text.encode()).hexdigest()
            if (final["length"], final["sha256"], final["last_seq"]) != (
                len(text),
                digest,
                self.last_seq,
            ):
                self.problems.append("final status length/sha256/last_seq do not match")


@dataclass
class Violations:
    """Every contract violation of a section, counted by kind, with examples."""

    checked: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, problems: Iterable[str]) -> None:
        self.checked += 1
        for problem in problems:
            self.kinds[problem.split(":")[0].split(" (")[0]] += 1
            if len(self.examples) < EXAMPLES:
                self.examples.append(f"{where}: {problem}")

    def add_checks(self, where: str, checks: Iterable[StreamCheck]) -> None:
        for check in checks:
            self.add(f"{where}, {check.who}", check.problems)

    def llm_calls(self, where: str, calls: dict[str, int], prompts: Iterable[str]) -> None:
        """One call of the text source per prompt, no more, no less."""
        for prompt in prompts:
            if calls.get(prompt, 0) != 1:
                self.add(where, [f"LLM calls: {calls.get(prompt, 0)} for one prompt"])

    def merge(self, other: Violations) -> None:
        self.checked += other.checked
        self.kinds.update(other.kinds)
        self.examples += other.examples[: max(0, EXAMPLES - len(self.examples))]

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def summary(self) -> str:
        if not self.total:
            return f"0 in {self.checked:,} checks"
        kinds = ", ".join(f"{count} {kind}" for kind, count in self.kinds.most_common())
        return f"{self.total} ({kinds}) in {self.checked:,} checks"

    def note(self) -> str:
        return "Contract violations: " + "; ".join(self.examples)


def database_check(expected: dict[str, str]) -> list[tuple[str, str]]:
    """For each stream id → the text its source made: the row is ``done`` with that
    text, its chunks are gapless from 0 and join to it, its chat message holds it.
    Returns (stream id, problem) pairs."""
    from chatproject.chat.models import Message
    from streaming.models import Chunk, Stream

    found: list[tuple[str, str]] = []
    rows = {str(s.id): s for s in Stream.objects.filter(id__in=list(expected))}
    chunks: dict[str, list[tuple[int, str]]] = {sid: [] for sid in expected}
    for stream_id, seq, part, text in (
        Chunk.objects.filter(stream_id__in=list(expected))
        .order_by("stream_id", "seq")
        .values_list("stream_id", "seq", "part", "text")
    ):
        if part == "text":
            chunks[str(stream_id)].append((seq, text))
    messages = {
        str(m.stream_id): m.text for m in Message.objects.filter(stream_id__in=list(expected))
    }
    for stream_id, text in expected.items():
        row = rows.get(stream_id)
        if row is None:
            found.append((stream_id, "stream row missing"))
            continue
        if row.status != "done":
            found.append((stream_id, f"ended {row.status}: {row.error}"))
        seqs = [seq for seq, _ in chunks[stream_id]]
        if seqs != list(range(len(seqs))) or (seqs and seqs[-1] != row.last_seq):
            found.append((stream_id, "gap: chunk seqs in the database are not 0…last_seq"))
        if "".join(t for _, t in chunks[stream_id]) != text:
            found.append((stream_id, "chunk text differs in the database"))
        if row.text != text:
            found.append((stream_id, "stream text differs in the database"))
        if stream_id in messages and messages[stream_id] != text:
            found.append((stream_id, "message text differs in the database"))
    return found


def add_invariants(section: Any, violations: Violations) -> None:
    """The section's Goals row for the contract's invariants, and a note of what broke."""
    from bench.helpers import Goal

    section.goals.append(
        Goal(
            "contract invariants at every load",
            "exact text, no gap, no duplicate, one LLM call a prompt, final status delivered",
            violations.summary(),
            violations.total == 0,
        )
    )
    if violations.total:
        section.notes.append(violations.note())
