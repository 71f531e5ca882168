"""The example end to end, as a browser would use it: log in, paste a text through the
form, and follow the summary over real websockets to a real daphne process. Nothing
here comes from the repository's chat project or its tests: it runs against the
component's wheel alone (make example-test)."""

from __future__ import annotations

import asyncio
import hashlib
import html
import http.cookiejar
import json
import re
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import connections
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from summaries.models import Summary

pytestmark = pytest.mark.django_db(transaction=True)

FINAL = {"done", "error", "cancelled", "timeout"}
PARAGRAPHS = [
    ("Rivers carve their valleys over many thousands of years.", "Ice helps. So do floods."),
    ("A delta forms where a slow river drops its load of silt.", "The Nile has one."),
    ("Meanders grow because the outer bank erodes faster than the inner.", "Then they cut off."),
    ("Floodplains are flat because each flood spreads a thin new layer.", "Farmers love them."),
    ("Waterfalls retreat upstream as the soft rock beneath them wears away.", "Slowly."),
    ("Groundwater feeds most rivers during the long dry months of summer.", "Springs show it."),
    ("Dams trap the sediment that beaches downstream would otherwise receive.", "Coasts shrink."),
    ("Estuaries mix salt and fresh water twice a day with the tides.", "Fish breed there."),
]
TEXT = "\n\n".join(f"{first} {rest}" for first, rest in PARAGRAPHS)
SUMMARY = " ".join(first for first, _ in PARAGRAPHS)
REASONING = (
    f"Reading {len(PARAGRAPHS)} paragraphs of {len(TEXT.split())} words. "
    "Keeping the first sentence of each."
)
STATE = re.compile(r'<script id="summary-state" type="application/json">(.*?)</script>', re.S)


@pytest.fixture(autouse=True)
async def _close_connections() -> AsyncIterator[None]:
    """Connections the ORM opened in asgiref's thread, closed before the flush."""
    yield
    await sync_to_async(connections.close_all)()


class Browser:
    """A real HTTP client with a cookie jar (the standard library's), like a browser."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), urllib.request.ProxyHandler({})
        )

    def cookie(self, name: str) -> str:
        return next(c.value for c in self.jar if c.name == name)

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)

    def get(self, path: str) -> tuple[str, str]:
        """The final URL (after redirects) and the body."""
        with self.opener.open(self.base + path, timeout=10) as response:
            return response.url, response.read().decode()

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[str, str]:
        """A form POST with the CSRF token of the cookie, as Django's forms send it."""
        data = {**fields, "csrfmiddlewaretoken": self.cookie("csrftoken")}
        body = urllib.parse.urlencode(data).encode()
        with self.opener.open(self.base + path, data=body, timeout=10) as response:
            return response.url, response.read().decode()

    def log_in(self, username: str, password: str) -> None:
        self.get("/accounts/login/")  # the CSRF cookie
        url, _ = self.post_form("/accounts/login/", {"username": username, "password": password})
        assert urllib.parse.urlparse(url).path == "/", url


def page_state(body: str) -> dict[str, Any]:
    match = STATE.search(body)
    assert match, body
    return json.loads(match[1])


class Tab:
    """One summary page's websocket (the ``websockets`` library over TCP): it records
    every frame it receives, as the page's stream client would be handed them."""

    def __init__(self, url: str, origin: str, cookie: str) -> None:
        self.url, self.origin, self.cookie = url, origin, cookie
        self.frames: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.connection: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None

    async def open(self) -> Tab:
        self.connection = await connect(
            self.url,
            origin=self.origin,
            additional_headers={"Cookie": self.cookie},
            proxy=None,
            open_timeout=10,
        )
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.connection is not None
        try:
            async for message in self.connection:
                self.frames.append(json.loads(message))
                self.arrived.set()
        except ConnectionClosed:  # the server went away: what arrived is what counts
            pass

    async def send(self, frame: dict[str, Any]) -> None:
        assert self.connection is not None
        await self.connection.send(json.dumps(frame))

    async def wait_for(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first frame received that matches, waiting for it if need be."""
        async with asyncio.timeout(30):
            while True:
                found = next((f for f in self.frames if match(f)), None)
                if found is not None:
                    return found
                self.arrived.clear()
                await self.arrived.wait()

    async def final(self) -> dict[str, Any]:
        return await self.wait_for(lambda f: f["type"] == "status" and f["status"] in FINAL)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    def joined(self, kind: str, part: str) -> str:
        return "".join(f["text"] for f in self.of(kind) if f["part"] == part)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self.reader is not None:
            await self.reader


async def test_a_summary_streams_to_every_tab_resumes_mid_way_and_after_a_reload(server):
    await sync_to_async(get_user_model().objects.create_user)("reader", password="pw-reader")
    browser = Browser(server.http)
    await asyncio.to_thread(browser.log_in, "reader", "pw-reader")

    # The component's wheel ships its browser module; the page's module imports it.
    _, client_js = await asyncio.to_thread(browser.get, "/static/streaming/stream-client.js")
    assert "export class StreamClient" in client_js
    _, page_js = await asyncio.to_thread(browser.get, "/static/summaries/summary.js")
    assert "../streaming/stream-client.js" in page_js

    # Paste a text: the form's POST redirects to the summary's page, rendered pending.
    url, body = await asyncio.to_thread(browser.post_form, "/", {"text": TEXT})
    match = re.fullmatch(r".*/summaries/(\d+)/", url)
    assert match, url
    summary_id = int(match[1])
    state = page_state(body)
    assert (state["status"], state["text"], state["last_seq"]) == ("pending", "", -1)
    stream_id = state["stream_id"]
    ws_url = server.ws + state["ws_path"]

    def tab() -> Tab:
        return Tab(ws_url, server.http, browser.cookie_header)

    # Anonymous sockets are refused.
    with pytest.raises(InvalidStatus):
        await Tab(ws_url, server.http, "").open()

    # Two tabs open at once: one socket wins the claim and drives, the other follows.
    tabs = await asyncio.gather(tab().open(), tab().open())
    hellos = [await t.wait_for(lambda f: f["type"] == "summary") for t in tabs]
    assert sorted(h["driving"] for h in hellos) == [False, True]
    assert {h["stream_id"] for h in hellos} == {stream_id}
    driver, follower = tabs if hellos[0]["driving"] else tabs[::-1]
    for t in tabs:  # what the page's stream client sends on open
        await t.send({"type": "resume", "stream_id": stream_id, "after": state["last_seq"]})

    # A third tab opens mid-way and resumes after the seq its page was rendered with.
    k = (await follower.wait_for(lambda f: f["type"] == "chunk" and f["seq"] >= 2))["seq"]
    ended_early = any(f["type"] == "status" and f["status"] in FINAL for f in follower.frames)
    late = await tab().open()
    assert not (await late.wait_for(lambda f: f["type"] == "summary"))["driving"]
    await late.send({"type": "resume", "stream_id": stream_id, "after": k})

    finals = [await t.final() for t in (driver, follower, late)]
    assert not ended_early, "the stream ended before the late tab resumed"
    final = finals[0]
    assert all(f == final for f in finals)
    assert final["status"] == "done"
    assert (final["finish_reason"], final["model"]) == ("stop", "extractive-1")
    words = len(TEXT.split())
    assert final["usage"] == {
        "prompt_tokens": words,
        "completion_tokens": len(SUMMARY.split()),
        "reasoning_tokens": len(REASONING.split()),
    }

    # The driver's tokens = the other tab's chunks, per part; reasoning kept apart.
    for part, expected in (("text", SUMMARY), ("reasoning", REASONING)):
        assert driver.joined("token", part) == expected
        assert follower.joined("chunk", part) == expected
    assert follower.of("token") == [] and follower.of("snapshot") == []
    seqs = [f["seq"] for f in follower.of("chunk")]
    assert seqs == list(range(final["last_seq"] + 1))
    assert (final["length"], final["sha256"]) == (
        len(SUMMARY),
        hashlib.sha256(SUMMARY.encode()).hexdigest(),
    )
    assert final["reasoning_sha256"] == hashlib.sha256(REASONING.encode()).hexdigest()

    # The late tab got exactly the rest: every chunk after k, once, in order.
    rest = [f for f in follower.of("chunk") if f["seq"] > k]
    assert late.of("chunk") == rest and late.of("snapshot") == []

    # Persisted: the adapter's copy, and the component's HTTP API.
    row = await Summary.objects.aget(pk=summary_id)
    assert (row.summary, row.status) == (SUMMARY, "done")
    _, api = await asyncio.to_thread(browser.get, f"/api/streams/{stream_id}/")
    api_body = json.loads(api)
    assert (api_body["text"], api_body["reasoning"]) == (SUMMARY, REASONING)
    assert (api_body["status"], api_body["last_seq"]) == ("done", final["last_seq"])

    # A reload after the end: the page is whole, and its socket gets a snapshot + status.
    _, body = await asyncio.to_thread(browser.get, f"/summaries/{summary_id}/")
    state = page_state(body)
    assert (state["status"], state["text"], state["reasoning"]) == ("done", SUMMARY, REASONING)
    assert html.escape(SUMMARY) in body
    reload = await tab().open()
    assert not (await reload.wait_for(lambda f: f["type"] == "summary"))["driving"]
    await reload.send({"type": "resume", "stream_id": stream_id, "after": -1})
    assert (await reload.final()) == final
    [snapshot] = reload.of("snapshot")
    assert (snapshot["text"], snapshot["reasoning"]) == (SUMMARY, REASONING)
    assert snapshot["last_seq"] == final["last_seq"] and reload.of("chunk") == []

    for t in (*tabs, late, reload):
        await t.close()
