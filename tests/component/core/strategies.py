"""Hypothesis strategies shared by the core's tests: texts that hit every batching rule,
and arbitrary ways of cutting them into deltas."""

# Fullwidth CJK punctuation is the point of several fragments here.
# ruff: noqa: RUF001

from __future__ import annotations

import itertools

from hypothesis import strategies as st

from streaming.core.deltas import PARTS, Delta

# Fragments that hit every rule: terminators, closers, CJK, ZWJ emoji, decimals, newlines.
FRAGMENTS = [
    ".", "!", "?", "…", "...", "?!", "。", "！", "？", "」", "』", '"', "”", "’", ")", "»",
    " ", "  ", "\n", "\n\n", "\t", "a", "B", "z", "Q", "é", "Ω", "7", "1.", "3.14", "e.g.",
    "v1.2.3", "example.com/a.b", "你好", "世界", "👩‍💻", "🎉", "👍🏽", "- item", "```",
]  # fmt: skip
PUNCTUATION_HEAVY = ".!?。！？… \n\"')aZ09"

texts = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join),
    st.text(alphabet=PUNCTUATION_HEAVY, max_size=200),
    st.text(max_size=200),
)
max_chars_values = st.one_of(st.integers(1, 20), st.integers(21, 300), st.just(2048))


def cut(draw: st.DrawFn, text: str) -> list[str]:
    """One arbitrary way of cutting ``text`` into deltas (empty deltas included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=40)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def split_texts(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A text and one arbitrary way of cutting it into deltas."""
    text = draw(texts)
    return text, cut(draw, text)


@st.composite
def part_runs(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A stream's text as runs of one part each (neighbours may share a part)."""
    return draw(st.lists(st.tuples(st.sampled_from(PARTS), texts), max_size=8))


def as_deltas(draw: st.DrawFn, runs: list[tuple[str, str]]) -> list[Delta]:
    """Each run cut arbitrarily into deltas of its part (empty deltas included)."""
    return [Delta(piece, part) for part, text in runs for piece in cut(draw, text)]


@st.composite
def part_deltas(draw: st.DrawFn) -> list[Delta]:
    """Deltas of random parts with random splits."""
    return as_deltas(draw, draw(part_runs()))
