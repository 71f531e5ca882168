"""OpenAIProvider over real loopback HTTP against the fake server (no mocks).

A real server proves what matters most here: the wire format as servers send it, and
that an abort really closes the connection.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from chatproject.llm import ChatMessage, LLMError, LLMProvider, StreamItem
from chatproject.llm.openai_provider import _SESSIONS, OpenAIProvider, _retry_delay
from streaming import Delta, Finish
from tests.fake_llm import DEFAULT_REASONING, DEFAULT_REPLY, FakeLLMServer

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


async def items(provider: OpenAIProvider, messages: list[ChatMessage]) -> list[StreamItem]:
    return [item async for item in provider.stream(messages)]


async def collect(provider: OpenAIProvider, messages: list[ChatMessage]) -> list[str]:
    """The answer's text deltas (plain strings), after checking what else came."""
    streamed = await items(provider, messages)
    assert not any(isinstance(item, Finish) for item in streamed[:-1]), "Finish is last"
    return [item for item in streamed if isinstance(item, str)]


def finish_of(streamed: list[StreamItem]) -> Finish | None:
    return streamed[-1] if streamed and isinstance(streamed[-1], Finish) else None


def reasoning_of(streamed: list[StreamItem]) -> str:
    return "".join(i.text for i in streamed if isinstance(i, Delta) and i.part == "reasoning")


async def collect_until_error(
    provider: OpenAIProvider, messages: list[ChatMessage]
) -> tuple[list[str], LLMError]:
    tokens: list[str] = []
    with pytest.raises(LLMError) as info:
        async for item in provider.stream(messages):
            assert isinstance(item, str)
            tokens.append(item)
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
    assert body["stream_options"] == {"include_usage": True}
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


async def test_max_retries_retries_a_server_error(fake_llm: FakeLLMServer) -> None:
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
    assert isinstance(error.__cause__, Exception)  # the HTTP error, kept for logs


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


async def test_the_read_timeout_bounds_each_silence_not_the_whole_answer(
    fake_llm: FakeLLMServer,
) -> None:
    fake_llm.token_delay = 0.15  # 14 tokens: about four read timeouts in all
    started = time.monotonic()
    tokens = await collect(make_provider(fake_llm, read_timeout=0.5), ask("Hi"))
    assert "".join(tokens) == DEFAULT_REPLY
    assert time.monotonic() - started > 1.0


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


async def test_empty_answer_yields_only_a_finish_and_ends_cleanly(
    fake_llm: FakeLLMServer,
) -> None:
    streamed = await items(make_provider(fake_llm), ask("[scenario=empty]"))
    assert streamed == [
        Finish(
            finish_reason="stop",
            model="fake-model-1",
            usage={"prompt_tokens": 6, "completion_tokens": 0, "reasoning_tokens": 0},
        )
    ]
    assert fake_llm.wait_for(lambda: fake_llm.completed == 1)
    assert fake_llm.disconnects == 0


# --- reasoning, finish reason, model, usage ------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_is_read_from_either_field_and_comes_before_the_answer(
    fake_llm: FakeLLMServer, field: str
) -> None:
    streamed = await items(make_provider(fake_llm), ask(f"[scenario={field}]"))
    thoughts = [i for i in streamed if isinstance(i, Delta)]
    assert len(thoughts) > 3
    assert all(t.part == "reasoning" for t in thoughts)
    assert reasoning_of(streamed) == DEFAULT_REASONING
    assert "".join(i for i in streamed if isinstance(i, str)) == DEFAULT_REPLY
    first_text = next(n for n, i in enumerate(streamed) if isinstance(i, str))
    assert all(isinstance(i, Delta) for i in streamed[:first_text])


async def test_finish_carries_the_reason_model_and_usage_with_reasoning_tokens(
    fake_llm: FakeLLMServer,
) -> None:
    fake_llm.reasoning_reply = "one two three"
    fake_llm.reply = "four five"
    streamed = await items(make_provider(fake_llm), ask("[scenario=reasoning_content] now"))
    # The system prompt (5 words) and the prompt (2): what the fake server counts.
    assert finish_of(streamed) == Finish(
        finish_reason="stop",
        model="fake-model-1",
        usage={"prompt_tokens": 7, "completion_tokens": 5, "reasoning_tokens": 3},
    )


async def test_a_length_finish_is_passed_on(fake_llm: FakeLLMServer) -> None:
    streamed = await items(make_provider(fake_llm), ask("[scenario=length]"))
    finish = finish_of(streamed)
    assert finish is not None and finish.finish_reason == "length"
    assert "".join(i for i in streamed if isinstance(i, str)) == DEFAULT_REPLY


async def test_a_server_that_reports_nothing_gives_no_finish(fake_llm: FakeLLMServer) -> None:
    streamed = await items(make_provider(fake_llm), ask("[scenario=bare]"))
    assert streamed and all(isinstance(i, str) for i in streamed)
    assert "".join(streamed) == DEFAULT_REPLY  # type: ignore[arg-type]


async def test_every_sse_framing_a_server_may_send_is_read(fake_llm: FakeLLMServer) -> None:
    streamed = await items(make_provider(fake_llm), ask("[scenario=odd_framing]"))
    assert "".join(i for i in streamed if isinstance(i, str)) == DEFAULT_REPLY
    finish = finish_of(streamed)
    assert finish is not None and finish.finish_reason == "stop"  # no [DONE]: still fine


async def test_text_json_allows_but_orjson_refuses_still_arrives(fake_llm: FakeLLMServer) -> None:
    fake_llm.reply = "odd \ud800 text"
    assert "".join(await collect(make_provider(fake_llm), ask("Hi"))) == "odd \ud800 text"


# --- a server that refuses stream_options --------------------------------------------


async def test_a_server_refusing_stream_options_is_asked_again_without_and_remembered(
    fake_llm: FakeLLMServer,
) -> None:
    fake_llm.scenario = "rejects_stream_options"
    provider = make_provider(fake_llm)
    streamed = await items(provider, ask("Hi"))
    assert "".join(i for i in streamed if isinstance(i, str)) == DEFAULT_REPLY
    assert finish_of(streamed) == Finish(finish_reason="stop", model="fake-model-1", usage=None)
    assert ["stream_options" in body for body in fake_llm.requests] == [True, False]

    assert "".join(await collect(make_provider(fake_llm), ask("Again"))) == DEFAULT_REPLY
    assert ["stream_options" in body for body in fake_llm.requests] == [True, False, False]


async def test_another_server_still_gets_stream_options(fake_llm: FakeLLMServer) -> None:
    fake_llm.scenario = "rejects_stream_options"
    await collect(make_provider(fake_llm), ask("Hi"))
    with FakeLLMServer() as other:
        await collect(make_provider(other), ask("Hi"))
        assert "stream_options" in other.requests[0]


async def test_a_400_for_another_reason_is_reported_and_not_remembered(
    fake_llm: FakeLLMServer,
) -> None:
    _, error = await collect_until_error(make_provider(fake_llm), ask("[scenario=no_such]"))
    assert str(error) == "The language model returned HTTP 400."
    assert ["stream_options" in body for body in fake_llm.requests] == [True, False]
    await collect(make_provider(fake_llm), ask("Hi"))
    assert "stream_options" in fake_llm.requests[-1]


# --- errors inside the stream --------------------------------------------------------


async def test_an_error_event_mid_answer_becomes_a_readable_error(fake_llm: FakeLLMServer) -> None:
    fake_llm.error_after = 2
    tokens, error = await collect_until_error(
        make_provider(fake_llm), ask("[scenario=stream_error]")
    )
    assert tokens == ["Hello ", "from "]
    assert str(error) == "The language model reported an error mid-answer."


async def test_an_error_event_before_any_text_says_so(fake_llm: FakeLLMServer) -> None:
    fake_llm.error_after = 0
    tokens, error = await collect_until_error(
        make_provider(fake_llm), ask("[scenario=stream_error]")
    )
    assert tokens == []
    assert str(error) == "The language model reported an error before answering."


async def test_data_that_is_not_json_becomes_a_readable_error(fake_llm: FakeLLMServer) -> None:
    _, error = await collect_until_error(make_provider(fake_llm), ask("[scenario=not_json]"))
    assert str(error) == "The language model sent an unreadable reply before answering."


# --- warm-up -------------------------------------------------------------------------


async def test_warm_up_creates_the_loops_client_and_opens_a_connection(
    fake_llm: FakeLLMServer,
) -> None:
    provider = make_provider(fake_llm)
    await provider.warm_up()
    session = _SESSIONS[asyncio.get_running_loop()]
    assert fake_llm.model_lists == 1
    await collect(provider, ask("Hi"))
    await collect(make_provider(fake_llm), ask("[scenario=odd_framing]"))  # ends without [DONE]
    await collect(make_provider(fake_llm), ask("Hi"))
    assert _SESSIONS[asyncio.get_running_loop()] is session  # shared, not one per answer
    # The answers went over the connection the warm-up opened, kept alive between them.
    assert len(fake_llm.peers) == 4
    assert len(set(fake_llm.peers)) == 1


async def test_warm_up_never_raises_when_the_server_is_down(closed_port: int) -> None:
    await make_provider(base_url=f"http://127.0.0.1:{closed_port}/v1").warm_up()
    assert asyncio.get_running_loop() in _SESSIONS


async def test_a_rate_limit_is_retried_when_retries_are_allowed(fake_llm: FakeLLMServer) -> None:
    fake_llm.scenario = "http429"
    _, error = await collect_until_error(make_provider(fake_llm, max_retries=2), ask("Hi"))
    assert fake_llm.request_count == 3
    assert "429" in str(error)


@pytest.mark.parametrize(
    ("retry", "retry_after", "low", "high"),
    [
        (1, None, 0.375, 0.5),
        (2, None, 0.75, 1.0),
        (6, None, 6.0, 8.0),  # capped
        (1, "3", 3.0, 3.0),  # the server's word
        (1, "600", 0.375, 0.5),  # beyond a minute: backoff instead
        (1, "Wed, 21 Oct 2015 07:28:00 GMT", 0.375, 0.5),  # a date: backoff
    ],
)
def test_retry_delay_follows_retry_after_else_backs_off(
    retry: int, retry_after: str | None, low: float, high: float
) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    assert low <= _retry_delay(retry, headers) <= high
