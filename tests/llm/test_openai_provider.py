"""OpenAIProvider through the real SDK and real HTTP against the fake server (no mocks).

openai 3.x talks through httpx2, which respx cannot intercept; a loopback server also
proves what matters most here: that an abort really closes the connection.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from chatproject.llm import ChatMessage, LLMError, LLMProvider
from chatproject.llm.openai_provider import OpenAIProvider
from tests.fake_llm import DEFAULT_REPLY, FakeLLMServer

SYSTEM_PROMPT = "You are a test assistant."


def make_provider(
    server: FakeLLMServer | None = None,
    *,
    base_url: str | None = None,
    api_key: str = "",
    read_timeout: float = 5.0,
    max_retries: int = 0,
) -> OpenAIProvider:
    return OpenAIProvider(
        base_url=base_url or (server.base_url if server else ""),
        api_key=api_key,  # empty: must still work against a keyless local server
        model="fake-model-1",
        system_prompt=SYSTEM_PROMPT,
        connect_timeout=2.0,
        read_timeout=read_timeout,
        max_retries=max_retries,
    )


def ask(prompt: str) -> list[ChatMessage]:
    return [ChatMessage("user", prompt)]


async def collect(provider: OpenAIProvider, messages: list[ChatMessage]) -> list[str]:
    return [token async for token in provider.stream(messages)]


async def collect_until_error(
    provider: OpenAIProvider, messages: list[ChatMessage]
) -> tuple[list[str], LLMError]:
    tokens: list[str] = []
    with pytest.raises(LLMError) as info:
        async for token in provider.stream(messages):
            tokens.append(token)
    return tokens, info.value


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_provider_satisfies_the_protocol(fake_llm: FakeLLMServer) -> None:
    assert isinstance(make_provider(fake_llm), LLMProvider)


async def test_normal_answer_joins_to_the_reply(fake_llm: FakeLLMServer) -> None:
    tokens = await collect(make_provider(fake_llm), ask("Hi"))
    assert len(tokens) > 3
    assert all(tokens)  # the role chunk's empty content is not yielded
    assert "".join(tokens) == DEFAULT_REPLY
    assert fake_llm.wait_for(lambda: fake_llm.completed == 1)


async def test_request_carries_model_stream_system_prompt_and_history(
    fake_llm: FakeLLMServer,
) -> None:
    history = [
        ChatMessage("user", "First question"),
        ChatMessage("assistant", "First answer"),
        ChatMessage("user", "Second question"),
    ]
    await collect(make_provider(fake_llm), history)
    (body,) = fake_llm.requests
    assert body["model"] == "fake-model-1"
    assert body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "Second question"},
    ]


async def test_http500_becomes_a_readable_error(fake_llm: FakeLLMServer) -> None:
    tokens, error = await collect_until_error(make_provider(fake_llm), ask("[scenario=http500]"))
    assert tokens == []
    assert str(error) == "The language model returned HTTP 500."


async def test_http429_is_a_rate_limit_error_and_not_retried(fake_llm: FakeLLMServer) -> None:
    fake_llm.scenario = "http429"
    _, error = await collect_until_error(make_provider(fake_llm, max_retries=0), ask("Hi"))
    assert "rate limit" in str(error).lower()
    assert "429" in str(error)
    assert fake_llm.request_count == 1


async def test_max_retries_is_passed_to_the_sdk(fake_llm: FakeLLMServer) -> None:
    fake_llm.scenario = "http500"
    await collect_until_error(make_provider(fake_llm, max_retries=1), ask("Hi"))
    assert fake_llm.request_count == 2


async def test_error_text_never_contains_the_api_key(fake_llm: FakeLLMServer) -> None:
    provider = make_provider(fake_llm, api_key="sk-very-secret-key")
    _, error = await collect_until_error(provider, ask("[scenario=http500]"))
    assert "sk-very-secret-key" not in str(error)
    assert "sk-very-secret-key" not in repr(provider)


async def test_cut_mid_answer_yields_the_partial_tokens_then_fails(
    fake_llm: FakeLLMServer,
) -> None:
    fake_llm.cut_after = 3
    tokens, error = await collect_until_error(make_provider(fake_llm), ask("[scenario=cut]"))
    assert tokens == ["Hello ", "from ", "the "]
    assert "lost mid-answer" in str(error)
    assert isinstance(error.__cause__, Exception)  # the SDK error, kept for logs


async def test_cut_before_any_token_is_not_a_connect_error(fake_llm: FakeLLMServer) -> None:
    fake_llm.cut_after = 0
    tokens, error = await collect_until_error(make_provider(fake_llm), ask("[scenario=cut]"))
    assert tokens == []
    assert str(error) == "The connection to the language model was lost before answering."


async def test_slow_first_byte_within_the_read_timeout_succeeds(
    fake_llm: FakeLLMServer,
) -> None:
    fake_llm.first_byte_delay = 0.6
    started = time.monotonic()
    tokens = await collect(
        make_provider(fake_llm, read_timeout=3.0), ask("[scenario=slow_first_byte]")
    )
    assert "".join(tokens) == DEFAULT_REPLY
    assert time.monotonic() - started >= 0.6


async def test_slow_first_byte_beyond_the_read_timeout_fails(fake_llm: FakeLLMServer) -> None:
    fake_llm.first_byte_delay = 3.0
    tokens, error = await collect_until_error(
        make_provider(fake_llm, read_timeout=0.3), ask("[scenario=slow_first_byte]")
    )
    assert tokens == []
    assert "timed out" in str(error)


async def test_hang_mid_answer_times_out(fake_llm: FakeLLMServer) -> None:
    fake_llm.hang_after = 2
    started = time.monotonic()
    tokens, error = await collect_until_error(
        make_provider(fake_llm, read_timeout=0.5), ask("[scenario=hang]")
    )
    elapsed = time.monotonic() - started
    assert tokens == ["Hello ", "from "]
    assert "timed out" in str(error)
    assert 0.5 <= elapsed < 3.0
    # Giving up also hangs up: the server sees its client leave.
    assert await fake_llm.wait_for_async(lambda: fake_llm.disconnects == 1)


async def test_connection_refused_is_a_readable_error(closed_port: int) -> None:
    provider = make_provider(base_url=f"http://127.0.0.1:{closed_port}/v1")
    tokens, error = await collect_until_error(provider, ask("Hi"))
    assert tokens == []
    assert str(error) == "Could not connect to the language model."


async def test_aclose_closes_the_http_response(fake_llm: FakeLLMServer) -> None:
    fake_llm.token_delay = 0.05
    stream = make_provider(fake_llm).stream(ask("[scenario=endless]"))
    assert [await anext(stream), await anext(stream)] == ["Hello ", "from "]
    await stream.aclose()
    assert await fake_llm.wait_for_async(lambda: fake_llm.disconnects == 1, timeout=3)
    assert fake_llm.request_count == 1
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_cancelling_the_consumer_closes_the_http_response(
    fake_llm: FakeLLMServer,
) -> None:
    fake_llm.token_delay = 0.2  # long enough that the task is waiting for the next token
    received: list[str] = []

    async def consume() -> None:
        async for token in make_provider(fake_llm).stream(ask("[scenario=endless]")):
            received.append(token)

    task = asyncio.create_task(consume())
    assert await fake_llm.wait_for_async(lambda: len(received) >= 2, timeout=3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake_llm.wait_for_async(lambda: fake_llm.disconnects == 1, timeout=3)


async def test_cancelling_while_waiting_for_headers_closes_the_connection(
    fake_llm: FakeLLMServer,
) -> None:
    fake_llm.first_byte_delay = 30
    stream = make_provider(fake_llm, read_timeout=60).stream(ask("[scenario=slow_first_byte]"))
    task = asyncio.create_task(anext(stream))
    assert await fake_llm.wait_for_async(lambda: fake_llm.request_count == 1, timeout=3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake_llm.wait_for_async(lambda: fake_llm.disconnects == 1, timeout=3)


async def test_empty_answer_yields_nothing_and_ends_cleanly(fake_llm: FakeLLMServer) -> None:
    assert await collect(make_provider(fake_llm), ask("[scenario=empty]")) == []
    assert fake_llm.wait_for(lambda: fake_llm.completed == 1)
    assert fake_llm.disconnects == 0
