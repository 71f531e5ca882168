"""DemoProvider (offline, deterministic: thinking, answer, Finish) and get_provider's
choice by settings."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatproject.llm import ChatMessage, LLMProvider, StreamItem, get_provider
from chatproject.llm.demo import DemoProvider, demo_answer, demo_reasoning, tokenize
from chatproject.llm.openai_provider import OpenAIProvider
from streaming import Delta, Finish

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings


async def items(provider: DemoProvider, messages: list[ChatMessage]) -> list[StreamItem]:
    return [item async for item in provider.stream(messages)]


async def collect(provider: DemoProvider, prompt: str) -> list[str]:
    """The answer's tokens (plain strings)."""
    streamed = await items(provider, [ChatMessage("user", prompt)])
    return [item for item in streamed if isinstance(item, str)]


async def test_it_thinks_then_answers_then_finishes() -> None:
    prompt = "Tell me about streams"
    streamed = await items(DemoProvider(0), [ChatMessage("user", prompt)])
    thinking = [i for i in streamed if isinstance(i, Delta)]
    answer = [i for i in streamed if isinstance(i, str)]
    assert streamed == [*thinking, *answer, streamed[-1]]
    assert 3 < len(thinking) < 30
    assert all(t.part == "reasoning" for t in thinking)
    assert "".join(t.text for t in thinking) == demo_reasoning(prompt)
    assert prompt in demo_reasoning(prompt)
    assert "".join(answer) == demo_answer(prompt)
    assert streamed[-1] == Finish(
        finish_reason="stop",
        model="demo",
        usage={
            "prompt_tokens": 4,
            "completion_tokens": len(thinking) + len(answer),
            "reasoning_tokens": len(thinking),
        },
    )
    assert len(answer) == len(tokenize(demo_answer(prompt)))


async def test_warm_up_is_a_no_op() -> None:
    await DemoProvider(0).warm_up()


async def test_same_prompt_gives_the_same_tokens() -> None:
    provider = DemoProvider(tokens_per_second=0)
    first = await collect(provider, "Tell me about streams")
    assert first == await collect(provider, "Tell me about streams")
    assert first != await collect(provider, "Something else")
    assert "".join(first) == demo_answer("Tell me about streams")


async def test_answer_echoes_the_last_user_message_first() -> None:
    history = [
        ChatMessage("user", "old question"),
        ChatMessage("assistant", "old answer"),
        ChatMessage("user", "What is  a\nsentence batcher?"),
    ]
    tokens = [t for t in await items(DemoProvider(0), history) if isinstance(t, str)]
    first_sentence = "".join(tokens).split("\n")[0][:80]
    assert "What is a sentence batcher?" in first_sentence
    assert "old question" not in "".join(tokens)


async def test_a_long_prompt_is_echoed_briefly() -> None:
    text = "".join(await collect(DemoProvider(0), "word " * 500))
    assert len(text.split(". This is the offline")[0]) < 100


async def test_answer_exercises_the_sentence_batcher() -> None:
    tokens = await collect(DemoProvider(0), "Hi")
    text = "".join(tokens)
    assert 300 <= len(tokens) <= 400
    for feature in ("! ", "? ", "3.14", "e.g. ", "\n- ", "```python\n", "\n```\n", "。", "🎉"):
        assert feature in text, feature
    code = text.split("```python\n")[1].split("```")[0]
    assert "." in code
    # Word-ish tokens keep their whitespace; CJK comes a character at a time.
    assert all(token.strip() for token in tokens)
    assert "。" in tokens or any(t.startswith("。") for t in tokens)


async def test_zero_tokens_per_second_is_fast() -> None:
    started = time.monotonic()
    tokens = await collect(DemoProvider(tokens_per_second=0), "Hi")
    assert tokens
    assert time.monotonic() - started < 1.0


async def test_tokens_are_paced() -> None:
    stream = DemoProvider(tokens_per_second=50).stream([ChatMessage("user", "Hi")])
    started = time.monotonic()
    for _ in range(6):
        await anext(stream)
    assert time.monotonic() - started >= 5 / 50 * 0.9
    await stream.aclose()


async def test_aclose_after_a_few_tokens_ends_the_stream() -> None:
    stream = DemoProvider(tokens_per_second=0).stream([ChatMessage("user", "Hi")])
    assert [await anext(stream) for _ in range(3)] == [
        Delta("The ", "reasoning"),
        Delta("user ", "reasoning"),
        Delta("asked ", "reasoning"),
    ]
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_a_cancel_lands_even_at_full_speed() -> None:
    received: list[StreamItem] = []

    async def consume() -> None:
        async for item in DemoProvider(tokens_per_second=0).stream([ChatMessage("user", "Hi")]):
            received.append(item)

    task = asyncio.create_task(consume())
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0 < len(received) < len(await collect(DemoProvider(0), "Hi"))


def test_get_provider_builds_the_demo_provider(settings: Settings) -> None:
    settings.LLM_PROVIDER = "demo"
    settings.LLM_DEMO_TOKENS_PER_SECOND = 12.5
    provider = get_provider()
    assert isinstance(provider, DemoProvider)
    assert isinstance(provider, LLMProvider)
    assert provider.tokens_per_second == 12.5


def test_get_provider_builds_the_openai_provider(settings: Settings) -> None:
    settings.LLM_PROVIDER = "openai"
    settings.LLM_BASE_URL = "http://127.0.0.1:9/v1"
    settings.LLM_API_KEY = ""
    settings.LLM_MODEL = "some-model"
    settings.LLM_SYSTEM_PROMPT = "Be brief."
    settings.LLM_CONNECT_TIMEOUT = 3.0
    settings.LLM_READ_TIMEOUT = 30.0
    settings.LLM_MAX_RETRIES = 0
    provider = get_provider()
    assert isinstance(provider, OpenAIProvider)
    assert (provider.base_url, provider.model, provider.system_prompt) == (
        "http://127.0.0.1:9/v1",
        "some-model",
        "Be brief.",
    )
    assert (provider.connect_timeout, provider.read_timeout, provider.max_retries) == (3, 30, 0)


def test_get_provider_rejects_an_unknown_name(settings: Settings) -> None:
    settings.LLM_PROVIDER = "gpt-in-a-box"
    with pytest.raises(ImproperlyConfigured, match="gpt-in-a-box"):
        get_provider()
