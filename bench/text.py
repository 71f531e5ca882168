"""The benchmarks' text source: what a benchmark prompt asks for.

Shared by the processes of a run (the benchmark, its daphne servers and its LLM server),
so every side of a comparison produces exactly the same tokens. It imports nothing of
Django: the LLM server process has no settings.
"""

from __future__ import annotations

import re

_OPTION = re.compile(r"\b(pace|tokens|repeat)=(\d+(?:\.\d+)?)")


def prompt_options(prompt: str) -> dict[str, float]:
    """The ``name=N`` options written in a prompt."""
    return {key: float(value) for key, value in _OPTION.findall(prompt)}


def prompt_tokens(prompt: str) -> tuple[float, list[str]]:
    """What a benchmark prompt asks for: the pace (``pace=N`` tokens per second, 0 = as
    fast as possible) and the tokens, the demo answer ``repeat=N`` times over, cut after
    ``tokens=N``. The echo, the instrumented chat and the LLM server all answer with
    exactly these."""
    from chatproject.llm.demo import demo_answer, tokenize

    options = prompt_options(prompt)
    tokens = tokenize(demo_answer(prompt)) * int(options.get("repeat", 1))
    if "tokens" in options:
        tokens = tokens[: int(options["tokens"])]
    return options.get("pace", 0.0), tokens
