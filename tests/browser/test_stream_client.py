"""The component's browser client (streaming/static/streaming/stream-client.js) on its
own: frames in, text and `resume` frames out, in chromium with no server at all (the
module and the fallback API are served by Playwright's request routing).

Lost broadcasts, mismatching digests and the HTTP fallback are rare on a real server;
here each is one deliberate frame."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser.conftest import ROOT

pytestmark = pytest.mark.browser

MODULE = ROOT / "streaming" / "static" / "streaming" / "stream-client.js"
SECURE = "https://component.test"  # a secure context: crypto.subtle is there
PLAIN = "http://component.test"  # not one: the client checks lengths only

SETUP = """
async () => {
  const { StreamClient } = await import('/stream-client.js');
  window.sent = [];
  window.finals = [];
  window.client = new StreamClient({
    send: (frame) => { window.sent.push(frame); return true; },
    onFinal: (s) => window.finals.push({ status: s.status, text: s.text, verified: s.verified }),
    pollInterval: 20,
  });
}
"""


class Harness:
    """A blank page with the client loaded; ``frames`` feeds it, ``state`` reads it."""

    def __init__(self, page: Any) -> None:
        self.page = page

    def follow(self, stream_id: str = "s", **state: Any) -> None:
        options = json.dumps({"lastSeq": -1, **state})
        self.page.evaluate(f"() => {{ window.client.follow({json.dumps(stream_id)}, {options}) }}")

    def frames(self, *frames: dict[str, Any]) -> None:
        for frame in frames:
            self.page.evaluate("(f) => window.client.handleFrame(f)", {"stream_id": "s", **frame})

    def state(self, stream_id: str = "s") -> dict[str, Any]:
        return self.page.evaluate(
            """(id) => { const s = window.client.get(id);
                return { text: s.text, shown: s.shown, lastSeq: s.lastSeq, status: s.status,
                         driving: s.driving, verified: s.verified }; }""",
            stream_id,
        )

    @property
    def sent(self) -> list[dict[str, Any]]:
        return self.page.evaluate("() => window.sent")

    def finals(self, count: int = 1) -> list[dict[str, Any]]:
        self.page.wait_for_function("(n) => window.finals.length >= n", arg=count)
        return self.page.evaluate("() => window.finals")


def chunk(seq: int, text: str) -> dict[str, Any]:
    return {"type": "chunk", "seq": seq, "text": text}


def final(text: str, last_seq: int, status: str = "done", **overrides: Any) -> dict[str, Any]:
    """The final status frame the server sends for ``text``."""
    return {
        "type": "status",
        "status": status,
        "error": None,
        "last_seq": last_seq,
        "length": len(text),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        **overrides,
    }


def resume(after: int) -> dict[str, Any]:
    return {"type": "resume", "stream_id": "s", "after": after}


@pytest.fixture
def client(browser: Any) -> Iterator[Callable[..., Harness]]:
    pages: list[Any] = []

    def open_client(origin: str = SECURE, api: Callable[[int], dict] | None = None) -> Harness:
        page = browser.new_page()
        pages.append(page)

        def serve(route: Any) -> None:
            url = urlparse(route.request.url)
            if url.path == "/stream-client.js":
                route.fulfill(path=MODULE, content_type="text/javascript")
            elif url.path.startswith("/api/streams/") and api is not None:
                route.fulfill(json=api(int(parse_qs(url.query)["after"][0])))
            else:
                route.fulfill(body="<!doctype html><title>client</title>", content_type="text/html")

        page.route(f"{origin}/**", serve)
        page.goto(f"{origin}/")
        page.evaluate(SETUP)
        return Harness(page)

    yield open_client
    for page in pages:
        page.close()


def test_chunks_apply_in_order_once_and_a_gap_asks_for_a_resume(client):
    harness = client()
    harness.follow()
    harness.frames(chunk(0, "Hello "), chunk(0, "Hello "), chunk(1, "world."))
    assert harness.state()["text"] == "Hello world."
    assert harness.sent == []

    harness.frames(chunk(3, " Lost one before me."), chunk(4, " And me."))
    assert harness.state()["text"] == "Hello world."  # nothing applied past the gap
    assert harness.sent == [resume(1)]  # asked once for the same position

    harness.frames(chunk(2, " Two."), chunk(3, " Three."), chunk(2, " Two."))
    assert harness.state() | {"verified": None} == {
        "text": "Hello world. Two. Three.",
        "shown": "Hello world. Two. Three.",
        "lastSeq": 3,
        "status": "streaming",
        "driving": False,
        "verified": None,
    }


def test_snapshot_replaces_and_final_status_verifies(client):
    harness = client()
    harness.follow(text="stale", lastSeq=0, status="streaming")
    text = "Snapshot: héllo wörld 🎉 "
    harness.frames({"type": "snapshot", "text": text, "last_seq": 6, "status": "streaming"})
    harness.frames(chunk(5, "old"), chunk(7, "end."))
    assert harness.state()["text"] == text + "end."
    harness.frames(final(text + "end.", 7))
    assert harness.finals() == [{"status": "done", "text": text + "end.", "verified": True}]


@pytest.mark.parametrize("origin", [SECURE, PLAIN])
def test_text_that_fails_the_final_check_is_fetched_again_from_the_start(client, origin):
    harness = client(origin)
    harness.follow()
    harness.frames(chunk(0, "Helo"))  # same seq, wrong text (one letter short)
    harness.frames(final("Hello", 0))
    harness.page.wait_for_function("() => window.sent.length > 0")
    assert harness.sent == [resume(-1)]
    assert harness.state()["text"] == ""

    harness.frames({"type": "snapshot", "text": "Hello", "last_seq": 0, "status": "done"})
    harness.frames(final("Hello", 0))
    assert harness.finals() == [{"status": "done", "text": "Hello", "verified": True}]


def test_without_crypto_subtle_only_the_length_is_checked(client):
    harness = client(PLAIN)
    harness.follow()
    harness.frames(chunk(0, "Hellp"))
    harness.frames(final("Hello", 0))  # same length, other digest: not detectable here
    assert harness.finals() == [{"status": "done", "text": "Hellp", "verified": True}]
    assert harness.sent == []


def test_final_status_ahead_of_the_text_resumes_first(client):
    harness = client()
    harness.follow()
    harness.frames(chunk(0, "One. "), final("One. Two.", 1, status="cancelled"))
    assert harness.sent == [resume(0)]
    assert harness.state()["status"] == "streaming"
    harness.frames(chunk(1, "Two."), final("One. Two.", 1, status="cancelled"))
    assert harness.finals() == [{"status": "cancelled", "text": "One. Two.", "verified": True}]


def test_driver_shows_tokens_until_the_socket_is_lost(client):
    harness = client()
    harness.follow(status="pending", driving=True)
    harness.frames({"type": "token", "text": "Hel"}, {"type": "token", "text": "lo. "})
    harness.frames({"type": "token", "text": "More"}, chunk(0, "Hello. "))
    assert harness.state()["shown"] == "Hello. More"  # ahead of what is saved
    assert harness.state()["text"] == "Hello. "

    harness.page.evaluate("() => window.client.connectionLost()")
    assert harness.state()["shown"] == "Hello. "  # from here on, the saved text only
    harness.page.evaluate("() => window.client.resumeAll()")
    assert harness.sent == [resume(0)]
    harness.frames({"type": "token", "text": "ignored"}, chunk(1, "More."))
    assert harness.state()["shown"] == "Hello. More."


def test_driver_whose_saved_text_differs_from_its_tokens_shows_the_saved_text(client):
    harness = client()
    harness.follow(status="pending", driving=True)
    harness.frames({"type": "token", "text": "Hello. "}, chunk(0, "Help. "))
    assert harness.state()["driving"] is False
    assert harness.state()["shown"] == "Help. "


def test_http_fallback_polls_until_final(client):
    bodies = {
        -1: {"text": "One. ", "last_seq": 0, "status": "streaming", "snapshot": False},
        0: {"text": "Two. ", "last_seq": 1, "status": "streaming", "snapshot": False},
        # The chunks after 1 were purged: the whole text, to replace what is held.
        1: {"text": "One. Two. Three.", "last_seq": 2, "status": "done", "snapshot": True},
    }
    harness = client(api=lambda after: {"stream_id": "s", "error": None, **bodies[after]})
    harness.follow()
    harness.page.evaluate("() => window.client.startPolling()")
    assert harness.finals() == [{"status": "done", "text": "One. Two. Three.", "verified": None}]
    harness.page.evaluate("() => window.client.stopPolling()")


WATCHING = """
(silenceTimeout) => {
  window.client = new window.client.constructor({
    send: (frame) => { window.sent.push(frame); return true; },
    onFinal: (s) => window.finals.push({ status: s.status, text: s.text, verified: s.verified }),
    silenceTimeout,
  });
}
"""


def test_a_silent_stream_is_resumed_so_a_lost_final_status_still_arrives(client):
    harness = client()
    harness.page.evaluate(WATCHING, 200)
    harness.follow()
    harness.frames(chunk(0, "Hello."))  # then the final status is lost on the way
    harness.page.wait_for_function("() => window.sent.length > 0")
    assert harness.sent == [resume(0)]
    harness.frames(final("Hello.", 0))  # the resume's reply
    assert harness.finals() == [{"status": "done", "text": "Hello.", "verified": True}]


def test_a_stream_that_keeps_talking_is_not_resumed(client):
    harness = client()
    harness.page.evaluate(WATCHING, 600)
    harness.follow()
    for seq in range(24):  # 1.2 s, a frame every 50 ms: never 600 ms of silence
        harness.frames(chunk(seq, f"{seq} "))
        harness.page.wait_for_timeout(50)
    assert harness.sent == []
