"""Cut a stream of LLM text deltas into sentence-sized batches.

Tokens arrive one at a time, but one database row per token would flood the database and
every listener, so the driver persists one row per sentence (or paragraph) instead. Pure
stdlib, so the rules can be tested exhaustively and benchmarked without Django.

Every character goes through the same small state machine whatever the delta sizes, so
the batches depend only on the text and on when the caller flushes, never on how the
model happened to tokenize it. Each character is looked at once: O(total length).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from streaming.core.deltas import PARTS, TEXT, Delta, Part

#: End a sentence when followed by whitespace (and then not by a lowercase letter).
TERMINATORS = frozenset(".!?…")
#: End a sentence on their own: CJK text has no spaces after them.
CJK_TERMINATORS = frozenset("。！？")  # noqa: RUF001 (fullwidth on purpose)
#: May follow a terminator before the whitespace (or, for CJK, before the next text).
CLOSERS = frozenset("\"'”’)]»」』）］｝〕〉》】〗〙〛＂＇")  # noqa: RUF001

_NORMAL, _TERM, _SPACE = range(3)  # inside text / a terminator run / a whitespace run
_LINE_START, _LINE_DIGITS, _LINE_TEXT = range(3)  # so "1. Item" is a list marker


class SentenceBatcher:
    """Buffer deltas and hand back each batch as soon as its end is certain.

    A boundary can need one character of lookahead (is the word after ``. `` lowercase?),
    so text may be held until the next delta; :meth:`flush` always releases everything.
    """

    def __init__(self, *, max_chars: int = 2048, max_delay: float = 1.0) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        if max_delay < 0:
            raise ValueError("max_delay must not be negative")
        self.max_chars = max_chars
        self.max_delay = max_delay
        self._parts: list[str] = []  # buffered text, joined only when a batch is cut
        self._len = 0  # buffered length
        self._offset = 0  # stream offset of the first buffered char
        self._has_text = False  # a whitespace-only batch is not worth a row
        self._cut_ws = -1  # buffer index just after the last whitespace that follows text
        # (stream offset where a delta starts, its arrival time): the deadline's source.
        self._arrivals: deque[tuple[int, float]] = deque()
        self._mode = _NORMAL
        self._strong = False  # the terminator run holds a CJK terminator
        self._after_term = False  # the whitespace run follows a terminator run
        self._newlines = 0  # newlines in the whitespace run: two make a paragraph break
        self._line = _LINE_START

    @property
    def buffered(self) -> str:
        """Text fed but not yet returned in a batch."""
        return "".join(self._parts)

    @property
    def deadline(self) -> float | None:
        """When the buffered text must be flushed: first buffered char's arrival + max_delay.

        None when nothing is buffered. Text held for lookahead counts as buffered.
        """
        if not self._len:
            return None
        return self._arrivals[0][1] + self.max_delay

    def due(self, now: float) -> bool:
        """Whether the time fallback applies: the caller should :meth:`flush` now."""
        deadline = self.deadline
        return deadline is not None and now >= deadline

    def feed(self, delta: str, now: float) -> list[str]:
        """Add a delta received at monotonic time ``now``; return the batches it completed."""
        if not delta:
            return []
        self._arrivals.append((self._offset + self._len, now))
        batches: list[str] = []
        start = 0  # delta[start:i] is buffered but not yet in self._parts
        for i, ch in enumerate(delta):
            if self._boundary_before(ch) and self._has_text:
                batches.append(self._cut(delta[start:i], self._len))
                start = i
            self._len += 1
            if ch.isspace():
                if self._has_text:
                    self._cut_ws = self._len
            else:
                self._has_text = True
            if self._len >= self.max_chars:
                # Size fallback: cut after the last whitespace, else exactly at the limit.
                size = self._cut_ws if self._cut_ws > 0 else self._len
                batches.append(self._cut(delta[start : i + 1], size))
                start = i + 1
        if start < len(delta):
            self._parts.append(delta[start:])
        while len(self._arrivals) > 1 and self._arrivals[1][0] <= self._offset:
            self._arrivals.popleft()
        if not self._len:
            self._arrivals.clear()
        return batches

    def flush(self) -> str:
        """Return all buffered text ('' if none) and empty the buffer.

        For the time fallback, finish, cancel and error. The sentence state is kept, so
        the text that follows is judged exactly as if no flush had happened.
        """
        text = self.buffered
        self._offset += self._len
        self._parts, self._len, self._has_text, self._cut_ws = [], 0, False, -1
        self._arrivals.clear()
        return text

    def _cut(self, tail: str, size: int) -> str:
        """Return the first ``size`` buffered chars (``_parts`` + ``tail``), keep the rest."""
        text = "".join(self._parts) + tail
        batch, rest = text[:size], text[size:]
        self._parts = [rest] if rest else []
        self._len = len(rest)
        self._offset += size
        self._has_text = bool(rest)  # the rest of a size cut holds no whitespace
        self._cut_ws = -1
        return batch

    def _boundary_before(self, ch: str) -> bool:
        """Advance the state machine by ``ch``; whether a batch ends just before it."""
        space = ch.isspace()
        boundary = False
        if self._mode == _SPACE and not space:
            boundary = (
                self._newlines >= 2 or self._strong or (self._after_term and not ch.islower())
            )
            self._mode = _NORMAL
        elif self._mode == _TERM and not (
            space or ch in CLOSERS or ch in TERMINATORS or ch in CJK_TERMINATORS
        ):
            boundary = self._strong  # "3.14" and "a.b" go on; "。X" ends the sentence
            self._mode = _NORMAL

        if self._mode == _SPACE:
            self._newlines += ch == "\n"
        elif space:
            self._after_term = self._mode == _TERM
            self._strong = self._after_term and self._strong
            self._newlines = int(ch == "\n")
            self._mode = _SPACE
        elif self._mode == _TERM:
            self._strong = self._strong or ch in CJK_TERMINATORS
        elif ch in CJK_TERMINATORS or (ch in TERMINATORS and self._line != _LINE_DIGITS):
            self._mode = _TERM
            self._strong = ch in CJK_TERMINATORS

        if ch == "\n":
            self._line = _LINE_START
        elif self._line != _LINE_TEXT and not (space and self._line == _LINE_START):
            self._line = _LINE_DIGITS if ch.isascii() and ch.isdigit() else _LINE_TEXT
        return boundary


Batch = tuple[Part, str]


class PartBatcher:
    """Sentence batches of a stream with two parts: a batch never mixes parts, and a
    change of part ends the batch of the part before (so a reader sees the thinking
    end before the answer starts). Each part keeps its own sentence state."""

    def __init__(self, *, max_chars: int = 2048, max_delay: float = 1.0) -> None:
        self._batchers = {
            part: SentenceBatcher(max_chars=max_chars, max_delay=max_delay) for part in PARTS
        }
        self._part: Part = TEXT

    @property
    def deadline(self) -> float | None:
        """When the buffered text must be flushed (only the current part buffers)."""
        return self._batchers[self._part].deadline

    def due(self, now: float) -> bool:
        return self._batchers[self._part].due(now)

    def feed(self, delta: Delta, now: float) -> list[Batch]:
        """Add a delta received at ``now``; return the batches it completed, in order."""
        batches: list[Batch] = []
        if delta.part != self._part:
            batches.extend(self.flush())
            self._part = delta.part
        part = self._part
        batches.extend((part, text) for text in self._batchers[part].feed(delta.text, now))
        return batches

    def flush(self) -> list[Batch]:
        """Everything buffered, as at most one batch (only the current part buffers)."""
        text = self._batchers[self._part].flush()
        return [(self._part, text)] if text else []


def split_batches(text_deltas: Iterable[str], *, max_chars: int) -> list[str]:
    """Feed every delta at time 0 and flush at the end: the batches, without any timing."""
    batcher = SentenceBatcher(max_chars=max_chars)
    batches = [batch for delta in text_deltas for batch in batcher.feed(delta, 0.0)]
    if tail := batcher.flush():
        batches.append(tail)
    return batches
