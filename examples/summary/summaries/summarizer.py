"""The text source: offline and deterministic, in place of an LLM. It thinks aloud
briefly (reasoning), then writes an extractive summary, the first sentence of each
paragraph, word by word, then reports how it finished, as an LLM server would."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import streaming

MODEL = "extractive-1"
_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*$")


def first_sentences(text: str) -> list[list[str]]:
    """The words of each paragraph's first sentence."""
    sentences = []
    for paragraph in _PARAGRAPHS.split(text):
        words = paragraph.split()
        end = next((i for i, w in enumerate(words) if _SENTENCE_END.search(w)), len(words) - 1)
        if words:
            sentences.append(words[: end + 1])
    return sentences


async def summarize(
    text: str, *, pause: float
) -> AsyncIterator[str | streaming.Delta | streaming.Finish]:
    """Deltas of the summary of ``text``, one word each ``pause`` seconds."""
    sentences = first_sentences(text)
    thinking = (
        f"Reading {len(sentences)} paragraphs of {len(text.split())} words. "
        "Keeping the first sentence of each."
    ).split(" ")
    summary = [word for sentence in sentences for word in sentence]
    for i, word in enumerate(thinking):
        await asyncio.sleep(pause)
        yield streaming.Delta(word if i == 0 else f" {word}", part="reasoning")
    for i, word in enumerate(summary):
        await asyncio.sleep(pause)
        yield word if i == 0 else f" {word}"
    # Words stand in for tokens.
    usage = {
        "prompt_tokens": len(text.split()),
        "completion_tokens": len(summary),
        "reasoning_tokens": len(thinking),
    }
    yield streaming.Finish(finish_reason="stop", model=MODEL, usage=usage)
