"""An offline, deterministic provider for first runs, demos and tests.

Like a reasoning model, it first thinks briefly (``demo_reasoning``, streamed as
``Delta(..., part="reasoning")``), then answers (``demo_answer``, plain ``str`` tokens),
then reports a ``Finish``: reason ``stop``, model ``demo`` and usage counted as a real
server counts it (``prompt_tokens``: the words of the prompt; ``completion_tokens``: every
token streamed, reasoning included, as OpenAI counts; ``reasoning_tokens``: those of the
thinking).

The answer is written to exercise the sentence batcher downstream: ``!`` and ``?``,
decimals and abbreviations with inner dots, a markdown list, a fenced code block full of
dots, a CJK sentence ending in ``。`` and an emoji. No network, no randomness: the same
prompt always yields the same deltas.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Sequence

from streaming import Delta, Finish

from .base import ChatMessage, StreamItem

MODEL = "demo"

# CJK has no spaces between words: like a real model, emit it a character at a time so a
# sentence end (。) arrives in the middle of a line, not glued to a whole paragraph.
_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
_TOKEN_RE = re.compile(rf"[{_CJK}]\s*|[^\s{_CJK}]+\s*")
_ECHO_MAX_CHARS = 60

_BODY = """\
This is the offline demo model, so no real language model was asked! It streams a \
fixed answer word by word, which is enough to watch tokens arrive, get batched into \
sentences and be saved. Did you notice how the first sentence ended with an exclamation \
mark? Numbers such as 3.14 or 2.5 million must not end a sentence, and neither should \
abbreviations, e.g. this one, or i.e. that one. The answer also mentions version 6.1 of \
Django and a price of $4.99 to keep the batcher honest.

Here is what the demo covers:

- plain sentences ending with a period, a question mark or an exclamation mark
- decimals like 3.14 and abbreviations like e.g. inside a sentence
- a fenced code block whose dots are not sentence ends
- a sentence in Chinese, and an emoji at the very end

A short Python example follows. Its dots belong to the code, not to any sentence:

```python
import os.path

def read_config(path: str = "settings.local.py") -> str:
    full = os.path.join("conf.d", path)
    return open(full).read().strip()  # e.g. "DEBUG = True."
```

After the code block the prose continues. Mr. Smith asked whether the stream can be \
stopped halfway... It can: press stop, and the saved text ends exactly where the stream \
did. Reloading the page mid-answer resumes the stream instead of starting over.

Why send sentences rather than single tokens? Saving every token would mean one database \
write per word, while saving whole sentences keeps the writes few and the text readable \
at every step. A sentence ends at a period, a question mark or an exclamation mark \
followed by a space, but not inside 3.14, not after e.g. and not within a code block. \
Quotes count too: she said "it works!" and then left.

1. Send a message.
2. Watch the answer stream in.
3. Press stop, or reload the page, and see what happens.

这是一个用于测试的中文句子。流式输出也应该正确处理它。

That is the end of the demo answer. Thanks for trying it out 🎉
"""


def _last_user_text(messages: Sequence[ChatMessage]) -> str:
    """The text of the most recent user turn, or "" when there is none."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return ""


def _echo(prompt: str) -> str:
    """A one-line, bounded quote of the prompt so a demo answer visibly belongs to it."""
    flat = " ".join(prompt.split())
    if len(flat) > _ECHO_MAX_CHARS:
        flat = flat[: _ECHO_MAX_CHARS - 1].rstrip() + "…"
    return flat


def demo_answer(prompt: str) -> str:
    """The full demo answer for ``prompt``: what the tokens of ``stream`` join to."""
    echoed = _echo(prompt)
    opening = f'You asked: "{echoed}". ' if echoed else "You sent an empty message. "
    return opening + _BODY


def demo_reasoning(prompt: str) -> str:
    """The demo's thinking for ``prompt``: what the reasoning deltas of ``stream`` join to."""
    echoed = _echo(prompt)
    about = f'about "{echoed}"' if echoed else "nothing (an empty message)"
    return f"The user asked {about}; I will answer with the demo text."


def tokenize(text: str) -> list[str]:
    """Split into word-ish tokens keeping trailing whitespace, so they join back exactly."""
    return _TOKEN_RE.findall(text)


class DemoProvider:
    """Streams a canned answer at ``tokens_per_second`` (0 or less: as fast as possible)."""

    def __init__(self, tokens_per_second: float) -> None:
        self.tokens_per_second = tokens_per_second

    @property
    def delay(self) -> float:
        """Seconds between two tokens."""
        return 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0

    async def warm_up(self) -> None:
        """Nothing to get ready: no client, no network."""

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[StreamItem, None]:
        """Yield the thinking, then the answer, then a Finish; every token awaits, so a
        cancel always lands."""
        prompt = _last_user_text(messages)
        thinking = tokenize(demo_reasoning(prompt))
        answer = tokenize(demo_answer(prompt))
        delay = self.delay
        for index, token in enumerate(thinking + answer):
            # The first token comes at once, later ones at the configured pace: like a
            # real model, whose latency is mostly in the time to the first token.
            await asyncio.sleep(delay if index else 0)
            yield Delta(token, part="reasoning") if index < len(thinking) else token
        yield Finish(
            finish_reason="stop",
            model=MODEL,
            usage={
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": len(thinking) + len(answer),
                "reasoning_tokens": len(thinking),
            },
        )
