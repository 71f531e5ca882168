"""The LLM fails in every way a network service can: nobody listening, HTTP 500, HTTP 429,
the connection cut mid-answer, silence longer than the read timeout. Each answer ends as
``error`` with a message a person can read, keeping the text that did arrive, and the
next prompt on the same socket works.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from chatproject.chat.adapter import GENERIC_FAILURE
from tests.reliability.support import (
    Page,
    account,
    assert_settled,
    escaped_exceptions,
    persisted,
)
from tests.servers import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

READ_TIMEOUT = 1.0


class Forwarder:
    """A TCP port that forwards to the fake LLM once started: before, it is a closed port
    (connection refused), as when the LLM server is down."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port, self.target_port = port, target_port
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def readable(message: str | None) -> bool:
    """A sentence for a person: not empty, short, one line, no traceback or class path."""
    return bool(
        message
        and len(message) < 300
        and "\n" not in message
        and "Traceback" not in message
        and "openai." not in message
        and "httpx" not in message
    )


async def test_each_llm_failure_ends_as_a_readable_error_keeping_partial_text_and_the_socket_works(
    start_daphne, fake_llm, report
):
    port = free_port()
    forwarder = Forwarder(port, fake_llm.port)
    server = start_daphne(llm_base_url=f"http://127.0.0.1:{port}/v1", LLM_READ_TIMEOUT=READ_TIMEOUT)
    ann = await account("ann")
    page = await Page(server, ann.path, ann.cookie, idle=None).connect()
    tokens = fake_llm.reply.split(" ")
    first_three = " ".join(tokens[:3]) + " "
    cases = [
        ("connection refused", "Hello.", ""),
        ("HTTP 500", "[scenario=http500]", ""),
        ("HTTP 429", "[scenario=http429]", ""),
        ("cut mid-answer", "[scenario=cut]", first_three),
        (f"silent > read timeout {READ_TIMEOUT} s", "[scenario=hang]", first_three),
    ]
    outcomes = []
    try:
        for name, prompt, partial in cases:
            if name != "connection refused" and forwarder.server is None:
                await forwarder.start()
            started = time.monotonic()
            stream_id = await page.prompt(prompt)
            view = await page.until_final(stream_id, timeout=20)
            took = time.monotonic() - started
            db = await persisted(stream_id)
            assert_settled(db, "error")
            error = view.final["error"]
            outcomes.append(f"{name}: {took:.2f} s, kept {len(db.chunk_text)} chars, {error!r}")
            assert readable(error), (name, error)
            assert error != GENERIC_FAILURE, f"{name}: the provider did not explain the failure"
            assert db.error == error
            assert db.chunk_text == partial, (name, db.chunk_text)
            assert view.tokens == view.text == partial, name
            assert view.clean and view.verified()
        assert took < READ_TIMEOUT + 4, "the silent LLM was waited on far beyond the timeout"

        stream_id = await page.prompt("And now a normal answer, please.")
        view = await page.until_final(stream_id, timeout=20)
        db = await persisted(stream_id)
        assert_settled(db, "done")
        assert view.tokens == view.text == db.chunk_text == fake_llm.reply
    finally:
        await page.close()
        await forwarder.stop()
    assert escaped_exceptions(server) == [], "an LLM failure was logged as a server error"

    report("tried", "on one socket: " + "; ".join(name for name, _, _ in cases) + "; then normal")
    for outcome in outcomes:
        report("measured", outcome)
    report(
        "held",
        "each ended error with a readable, specific message; text kept = tokens the "
        "driver got = chunks = message text; the next prompt on the same socket was done "
        f"with the whole reply; LLM requests seen: {fake_llm.request_count}",
    )


@pytest.mark.parametrize("odd", ["\x00", "\ud800"], ids=["NUL character", "lone surrogate"])
async def test_llm_text_no_database_can_store_still_ends_promptly_as_the_driver_saw_it(
    start_daphne, fake_llm, report, odd
):
    """A model can send any JSON string: a NUL (PostgreSQL text cannot hold one) or a
    lone surrogate (not encodable in UTF-8 at all). The answer must still end promptly,
    and what the driver was shown must be what was saved."""
    fake_llm.reply = f"Hello there. This token has {odd} inside. The end."
    server = start_daphne(llm_base_url=fake_llm.base_url)
    ann = await account("ann")
    page = await Page(server, ann.path, ann.cookie, idle=None).connect()
    started = time.monotonic()
    stream_id = await page.prompt("Say something odd.")
    try:
        view = await page.until_final(stream_id, timeout=20)
    except TimeoutError:
        db = await persisted(stream_id)
        pytest.fail(
            f"no final status within 20 s: the stream is {db.status} with {db.chunk_text!r} "
            f"saved, the driver was shown {page.view(stream_id).tokens!r}; server errors: "
            f"{escaped_exceptions(server)}"
        )
    took = time.monotonic() - started
    db = await persisted(stream_id)
    await page.close()
    report("tried", f"the LLM's answer contains {odd!r}; default lease and DB retry bound")
    report(
        "measured",
        f"ended {db.status} after {took:.1f} s ({db.error!r}); saved {db.chunk_text!r}; "
        f"the driver was shown {view.tokens!r}",
    )
    assert took < 5, "the answer hung: it ended only when its lease expired or retries ran out"
    assert_settled(db, {"done", "error"})
    assert view.tokens == view.text == db.chunk_text
    assert escaped_exceptions(server) == [], escaped_exceptions(server)
    report("held", "ended promptly; the driver's tokens = the saved text")
