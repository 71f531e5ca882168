"""The sentence batcher: what ends a batch, what does not, and that no text is ever lost."""

# Fullwidth CJK punctuation is the point of several cases here.
# ruff: noqa: RUF001

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.core.batching import SentenceBatcher, split_batches
from tests.component.core.strategies import max_chars_values, split_texts


def one_shot(text: str) -> list[str]:
    return [text]


def by_char(text: str) -> list[str]:
    return list(text)


def by_word(text: str) -> list[str]:
    """Roughly how an LLM tokenizes: a word with its trailing whitespace."""
    return re.findall(r"\S+\s*|\s+", text)


SPLITS = [one_shot, by_char, by_word]


# --- properties -------------------------------------------------------------------------


@settings(max_examples=400)
@given(split_texts(), max_chars_values)
def test_batches_join_back_to_the_text_and_respect_max_chars(
    case: tuple[str, list[str]], max_chars: int
) -> None:
    text, deltas = case
    batches = split_batches(deltas, max_chars=max_chars)
    assert "".join(batches) == text
    assert all(0 < len(batch) <= max_chars for batch in batches)


@settings(max_examples=400)
@given(split_texts(), max_chars_values)
def test_batches_do_not_depend_on_how_the_text_was_split(
    case: tuple[str, list[str]], max_chars: int
) -> None:
    # Every char goes through the same state machine, so this holds even with size cuts.
    text, deltas = case
    assert split_batches(deltas, max_chars=max_chars) == split_batches([text], max_chars=max_chars)


@given(split_texts(), st.integers(1, 50), st.lists(st.booleans(), max_size=40))
def test_flushing_at_any_point_loses_and_duplicates_nothing(
    case: tuple[str, list[str]], max_chars: int, flushes: list[bool]
) -> None:
    text, deltas = case
    batcher = SentenceBatcher(max_chars=max_chars)
    out: list[str] = []
    for i, delta in enumerate(deltas):
        out += batcher.feed(delta, float(i))
        if i < len(flushes) and flushes[i]:
            out.append(batcher.flush())
        assert (batcher.deadline is None) == (batcher.buffered == "")
    out.append(batcher.flush())
    assert "".join(out) == text
    assert all(len(batch) <= max_chars for batch in out)


@settings(max_examples=400)
@given(split_texts(), max_chars_values, st.lists(st.booleans(), max_size=40))
def test_a_fed_batch_is_whitespace_only_only_as_a_size_cut_of_max_chars(
    case: tuple[str, list[str]], max_chars: int, flushes: list[bool]
) -> None:
    # The guarantee: a batch that ``feed`` returns at a sentence boundary holds text
    # (whitespace after a flush joins the next sentence). Whitespace alone comes out
    # only as a size cut of exactly max_chars, or from ``flush``, which releases
    # whatever is buffered.
    _, deltas = case
    batcher = SentenceBatcher(max_chars=max_chars)
    for i, delta in enumerate(deltas):
        for batch in batcher.feed(delta, float(i)):
            assert batch.strip() or len(batch) == max_chars, repr(batch)
        if i < len(flushes) and flushes[i]:
            batcher.flush()


# --- where batches end ------------------------------------------------------------------

BOUNDARY_CASES = {
    "plain sentences": (
        "Hello world. How are you? Fine!",
        ["Hello world. ", "How are you? ", "Fine!"],
    ),
    "question and exclamation run": ("Really?! Yes.", ["Really?! ", "Yes."]),
    "three-dot ellipsis": ("Wait... Then it worked.", ["Wait... ", "Then it worked."]),
    "unicode ellipsis": ("Hmm… Okay.", ["Hmm… ", "Okay."]),
    "ellipsis before lowercase": ("Wait... what happened?", ["Wait... what happened?"]),
    "closing quote after period": (
        'She said "stop." Then she left.',
        ['She said "stop." ', "Then she left."],
    ),
    "closing bracket after period": ("(See above.) Next one.", ["(See above.) ", "Next one."]),
    "curly quote and guillemet": (
        "He wrote “done.” Then «fin.» End.",
        ["He wrote “done.” ", "Then «fin.» ", "End."],
    ),
    "all whitespace after a sentence stays with it": ("One.   Two.", ["One.   ", "Two."]),
    "newline after a sentence": ("Done.\nNext line.", ["Done.\n", "Next line."]),
    "digit after a sentence": ("It costs 5. 3 are left.", ["It costs 5. ", "3 are left."]),
    "decimals": (
        "Pi is 3.14 and e is 2.72. Done.",
        ["Pi is 3.14 and e is 2.72. ", "Done."],
    ),
    "version numbers": (
        "Use v1.2.3 or Django 6.1 now. Ok.",
        ["Use v1.2.3 or Django 6.1 now. ", "Ok."],
    ),
    "abbreviations before lowercase words": (
        "Fruit, e.g. apples, i.e. red ones, etc. and more. End.",
        ["Fruit, e.g. apples, i.e. red ones, etc. and more. ", "End."],
    ),
    "urls and file names": (
        "See https://example.com/a.b?x=1 or main.py today. Bye.",
        ["See https://example.com/a.b?x=1 or main.py today. ", "Bye."],
    ),
    "paragraph breaks": (
        "Intro line\n\nNext para\n\n\nThird",
        ["Intro line\n\n", "Next para\n\n\n", "Third"],
    ),
    "blank line holding spaces": ("a\n  \nb", ["a\n  \n", "b"]),
    "paragraph break before lowercase": ("end of it\n\nand more", ["end of it\n\n", "and more"]),
    "markdown list flows until the paragraph break": (
        "- one\n- two\n- three\n\nAfter the list.",
        ["- one\n- two\n- three\n\n", "After the list."],
    ),
    "numbered list markers are not sentence ends": (
        "1. First item.\n2. Second item.\n10. Tenth",
        ["1. First item.\n", "2. Second item.\n", "10. Tenth"],
    ),
    "fenced code block with dots": (
        "```python\nx = obj.method()\ny = a.b.c\n```\n\nDone.",
        ["```python\nx = obj.method()\ny = a.b.c\n```\n\n", "Done."],
    ),
    "cjk sentences need no whitespace": (
        "这是第一句。这是第二句！第三句？",
        ["这是第一句。", "这是第二句！", "第三句？"],
    ),
    "cjk closing bracket stays with its sentence": (
        "他说：「好。」然后走了。",
        ["他说：「好。」", "然后走了。"],
    ),
    "whitespace after a cjk sentence stays with it": ("好。 Next.", ["好。 ", "Next."]),
    "emoji": ("Done 🎉! Next 👩‍💻 step.", ["Done 🎉! ", "Next 👩‍💻 step."]),
    "no boundary at all": ("no boundary here at all", ["no boundary here at all"]),
    "trailing whitespace is released by the final flush": ("End. ", ["End. "]),
    "leading whitespace stays with the first sentence": ("  Hi. There", ["  Hi. ", "There"]),
}


@pytest.mark.parametrize("split", SPLITS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("text", "expected"), list(BOUNDARY_CASES.values()), ids=list(BOUNDARY_CASES)
)
def test_batches_end_at_sentence_boundaries(
    text: str, expected: list[str], split: Callable[[str], list[str]]
) -> None:
    assert split_batches(split(text), max_chars=2048) == expected


def test_a_batch_is_returned_as_soon_as_the_next_sentence_starts() -> None:
    batcher = SentenceBatcher()
    assert batcher.feed("Hello there.", 0.0) == []
    assert batcher.feed(" ", 0.1) == []  # could still be "e.g. foo"
    assert batcher.feed("How", 0.2) == ["Hello there. "]
    assert batcher.buffered == "How"


def test_text_held_for_lookahead_is_released_by_flush() -> None:
    batcher = SentenceBatcher()
    assert batcher.feed("All done. ", 0.0) == []
    assert batcher.flush() == "All done. "
    assert batcher.buffered == ""


def test_text_after_a_flush_never_makes_a_whitespace_only_batch() -> None:
    batcher = SentenceBatcher()
    batcher.feed("Hello.", 0.0)
    assert batcher.flush() == "Hello."
    assert batcher.feed(" World. Next", 1.0) == [" World. "]


# --- size fallback ----------------------------------------------------------------------

SIZE_CASES = {
    "cut after the last whitespace": ("alpha beta gamma", 8, ["alpha ", "beta ", "gamma"]),
    "no whitespace cuts exactly at the limit": ("abcdefghij", 4, ["abcd", "efgh", "ij"]),
    "leading whitespace is not a cut point": ("   abcdef", 4, ["   a", "bcde", "f"]),
    "a sentence end before the limit wins": ("Hi. There friend", 6, ["Hi. ", "There ", "friend"]),
    "one char per batch": ("Hi. 你", 1, ["H", "i", ".", " ", "你"]),
}


@pytest.mark.parametrize("split", SPLITS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("text", "max_chars", "expected"), list(SIZE_CASES.values()), ids=list(SIZE_CASES)
)
def test_long_text_without_boundary_is_cut_at_max_chars(
    text: str, max_chars: int, expected: list[str], split: Callable[[str], list[str]]
) -> None:
    assert split_batches(split(text), max_chars=max_chars) == expected


def test_one_huge_delta_yields_several_batches_in_order() -> None:
    batcher = SentenceBatcher(max_chars=5)
    assert batcher.feed("abcdefghijkl", 0.0) == ["abcde", "fghij"]
    assert batcher.flush() == "kl"


@pytest.mark.parametrize("max_chars", [0, -1])
def test_max_chars_below_one_is_rejected(max_chars: int) -> None:
    with pytest.raises(ValueError):
        SentenceBatcher(max_chars=max_chars)


def test_negative_max_delay_is_rejected() -> None:
    with pytest.raises(ValueError):
        SentenceBatcher(max_delay=-0.1)


# --- deadline and time fallback ---------------------------------------------------------


def test_an_empty_batcher_has_no_deadline_and_is_never_due() -> None:
    batcher = SentenceBatcher()
    assert batcher.deadline is None
    assert not batcher.due(1e9)


def test_an_empty_delta_does_not_start_the_clock() -> None:
    batcher = SentenceBatcher()
    assert batcher.feed("", 5.0) == []
    assert batcher.deadline is None


def test_deadline_is_first_buffered_arrival_plus_max_delay() -> None:
    batcher = SentenceBatcher(max_delay=1.0)
    batcher.feed("Hello", 10.0)
    assert batcher.deadline == 11.0
    assert not batcher.due(10.99)
    assert batcher.due(11.0)


def test_later_deltas_do_not_push_the_deadline_back() -> None:
    batcher = SentenceBatcher(max_delay=1.0)
    batcher.feed("Hello", 10.0)
    batcher.feed(" world", 10.8)
    assert batcher.deadline == 11.0


def test_after_a_batch_the_deadline_follows_the_first_remaining_char() -> None:
    batcher = SentenceBatcher(max_delay=1.0)
    assert batcher.feed("One. Tw", 0.0) == ["One. "]  # "Tw" arrived at 0.0
    batcher.feed("o", 0.5)
    assert batcher.deadline == 1.0


def test_deadline_moves_to_the_delta_that_started_the_remaining_text() -> None:
    batcher = SentenceBatcher(max_delay=1.0)
    batcher.feed("One. ", 0.0)
    assert batcher.feed("Two", 0.5) == ["One. "]
    assert batcher.deadline == 1.5


def test_flush_clears_the_deadline() -> None:
    batcher = SentenceBatcher(max_delay=1.0)
    batcher.feed("partial", 0.0)
    assert batcher.due(1.0)
    assert batcher.flush() == "partial"
    assert batcher.deadline is None
    assert not batcher.due(2.0)


def test_zero_max_delay_is_due_at_once() -> None:
    batcher = SentenceBatcher(max_delay=0.0)
    batcher.feed("x", 3.0)
    assert batcher.due(3.0)


def test_flush_on_an_empty_buffer_returns_an_empty_string() -> None:
    assert SentenceBatcher().flush() == ""
