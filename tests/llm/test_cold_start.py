"""A fresh process's first answer: everything it needs is imported with the provider
module, and ``warm_up()`` leaves the loop's client (and a connection) ready.

The times are printed, not asserted (``pytest -s`` shows them): they depend on the
machine and its load, and a timing assertion would make the suite flaky.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.fake_llm import FakeLLMServer

# Run in a fresh interpreter: nothing imported, no client, no connection.
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time

    started = time.perf_counter()
    from chatproject.llm import ChatMessage
    from chatproject.llm.openai_provider import _SESSIONS, OpenAIProvider
    imported = time.perf_counter() - started


    async def first_delta(provider):
        started = time.perf_counter()
        stream = provider.stream([ChatMessage("user", "Hi")])
        await anext(stream)
        took = time.perf_counter() - started
        async for _ in stream:
            pass
        return took


    async def main(base_url, warm):
        provider = OpenAIProvider(
            base_url=base_url, api_key="", model="m", system_prompt="",
            connect_timeout=5, read_timeout=30, max_retries=0,
        )
        started = time.perf_counter()
        if warm:
            await provider.warm_up()
        warm_up = time.perf_counter() - started
        client_ready = asyncio.get_running_loop() in _SESSIONS
        first = await first_delta(provider)
        second = await first_delta(provider)
        return {"import": imported, "warm_up": warm_up, "client_ready": client_ready,
                "first": first, "second": second}


    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2] == "warm"))))
    """
)


def fresh_process(base_url: str, mode: str) -> dict[str, float | bool]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, base_url, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["warm", "cold"])
def test_first_answer_of_a_fresh_process(
    fake_llm: FakeLLMServer, mode: str, record_property: pytest.RecordProperty
) -> None:
    fake_llm.token_delay = 0
    seen = fresh_process(fake_llm.base_url, mode)
    line = (
        f"{mode}: import {seen['import'] * 1e3:.0f} ms, warm_up {seen['warm_up'] * 1e3:.1f} ms, "
        f"first delta of the first answer {seen['first'] * 1e3:.1f} ms, "
        f"of the second {seen['second'] * 1e3:.1f} ms"
    )
    print(f"\n[cold start] {line}")
    record_property("cold start", line)
    assert seen["client_ready"] is (mode == "warm")
    assert fake_llm.model_lists == (1 if mode == "warm" else 0)
    assert fake_llm.completed == 2
