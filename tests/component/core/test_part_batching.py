"""The part batcher: sentence batches of a stream with two parts (the answer and the
model's reasoning), never mixing parts, and losing or reordering nothing."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.core.batching import Batch, PartBatcher
from streaming.core.deltas import PARTS, REASONING, TEXT, Delta
from tests.component.core.strategies import as_deltas, max_chars_values, part_deltas, part_runs


def batch_all(deltas: list[Delta], *, max_chars: int = 2048) -> list[Batch]:
    """Feed every delta (one a second) and flush at the end."""
    batcher = PartBatcher(max_chars=max_chars)
    batches = [batch for i, delta in enumerate(deltas) for batch in batcher.feed(delta, i)]
    return batches + batcher.flush()


def per_part(pairs: list[tuple[str, str]]) -> dict[str, str]:
    return {part: "".join(text for p, text in pairs if p == part) for part in PARTS}


def runs_of_parts(pairs: list[tuple[str, str]]) -> list[str]:
    """The parts in order, consecutive duplicates merged, empty texts ignored."""
    return [part for part, _ in itertools.groupby(part for part, text in pairs if text)]


# --- properties -------------------------------------------------------------------------


@settings(max_examples=150)
@given(part_deltas(), max_chars_values)
def test_the_batches_of_each_part_join_back_to_that_parts_deltas(
    deltas: list[Delta], max_chars: int
) -> None:
    batches = batch_all(deltas, max_chars=max_chars)
    assert per_part(batches) == per_part([(d.part, d.text) for d in deltas])


@settings(max_examples=150)
@given(part_deltas(), max_chars_values)
def test_every_change_of_part_ends_the_batch_before_it(deltas: list[Delta], max_chars: int) -> None:
    batches = batch_all(deltas, max_chars=max_chars)
    assert runs_of_parts(batches) == runs_of_parts([(d.part, d.text) for d in deltas])


@settings(max_examples=150)
@given(part_deltas(), max_chars_values)
def test_the_batches_in_order_are_the_deltas_in_order(deltas: list[Delta], max_chars: int) -> None:
    # Stronger than the two above together: character by character, with its part.
    def characters(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(part, ch) for part, text in pairs for ch in text]

    batches = batch_all(deltas, max_chars=max_chars)
    assert characters(batches) == characters([(d.part, d.text) for d in deltas])


@settings(max_examples=150)
@given(part_deltas(), max_chars_values)
def test_no_batch_is_empty_or_longer_than_max_chars(deltas: list[Delta], max_chars: int) -> None:
    assert all(0 < len(text) <= max_chars for _, text in batch_all(deltas, max_chars=max_chars))


@settings(max_examples=150)
@given(part_deltas(), max_chars_values)
def test_a_whitespace_only_batch_ends_its_part_or_is_a_size_cut(
    deltas: list[Delta], max_chars: int
) -> None:
    # The sentence batcher's guarantee (a batch cut at a sentence boundary holds text),
    # per part. A part's whitespace with nothing of that part after it yet still goes
    # out when the part changes or the stream flushes, or the part's text would be lost.
    batcher = PartBatcher(max_chars=max_chars)
    part = TEXT
    for i, delta in enumerate(deltas):
        for n, (batch_part, text) in enumerate(batcher.feed(delta, i)):
            ends_its_part = n == 0 and batch_part == part != delta.part
            assert text.strip() or ends_its_part or len(text) == max_chars, (batch_part, text)
        part = delta.part


@settings(max_examples=100)
@given(st.data(), part_runs(), max_chars_values)
def test_the_batches_do_not_depend_on_how_each_part_was_split(
    data: st.DataObject, runs: list[tuple[str, str]], max_chars: int
) -> None:
    # Only the text of each run (and where the part changes) decides the batches.
    whole = [Delta(text, part) for part, text in runs]
    pieces = as_deltas(data.draw, runs)
    assert batch_all(pieces, max_chars=max_chars) == batch_all(whole, max_chars=max_chars)


@given(part_deltas(), st.integers(1, 50), st.lists(st.booleans(), max_size=40))
def test_flush_releases_everything_at_any_point(
    deltas: list[Delta], max_chars: int, flushes: list[bool]
) -> None:
    batcher = PartBatcher(max_chars=max_chars)
    out: list[Batch] = []
    for i, delta in enumerate(deltas):
        out += batcher.feed(delta, i)
        if i < len(flushes) and flushes[i]:
            released = batcher.flush()
            assert len(released) <= 1
            out += released
            assert batcher.deadline is None
            assert batcher.flush() == []
    out += batcher.flush()
    assert batcher.deadline is None
    assert per_part(out) == per_part([(d.part, d.text) for d in deltas])


# --- examples ---------------------------------------------------------------------------


def test_reasoning_then_answer_makes_sentence_batches_of_each_part() -> None:
    deltas = [
        Delta("Let me think. ", REASONING),
        Delta("Ok.", REASONING),
        Delta("Hello. "),
        Delta("World!"),
    ]
    assert batch_all(deltas) == [
        (REASONING, "Let me think. "),
        (REASONING, "Ok."),
        (TEXT, "Hello. "),
        (TEXT, "World!"),
    ]


def test_the_first_delta_of_another_part_releases_the_part_before_at_once() -> None:
    batcher = PartBatcher()
    assert batcher.feed(Delta("no sentence end", REASONING), 0.0) == []
    assert batcher.feed(Delta("Answer"), 0.1) == [(REASONING, "no sentence end")]
    assert batcher.flush() == [(TEXT, "Answer")]


def test_parts_may_alternate_and_each_run_is_its_own_batch() -> None:
    deltas = [Delta("a", REASONING), Delta("b"), Delta("c", REASONING)]
    assert batch_all(deltas) == [(REASONING, "a"), (TEXT, "b"), (REASONING, "c")]


def test_the_deadline_is_the_current_parts_first_buffered_arrival() -> None:
    batcher = PartBatcher(max_delay=1.0)
    batcher.feed(Delta("thinking", REASONING), 10.0)
    assert batcher.deadline == 11.0
    batcher.feed(Delta("answer"), 10.5)
    assert batcher.deadline == 11.5
    assert not batcher.due(11.4)
    assert batcher.due(11.5)


def test_an_empty_part_batcher_has_no_deadline_and_flushes_nothing() -> None:
    batcher = PartBatcher()
    assert batcher.deadline is None
    assert not batcher.due(1e9)
    assert batcher.flush() == []
