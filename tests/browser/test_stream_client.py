"""The component's browser client (streaming/static/streaming/stream-client.js) on its
own: frames in, text and `resume` frames out, in chromium with no server at all (the
module and the fallback API are served by Playwright's request routing).

Lost broadcasts, mismatching digests and the HTTP fallbacks are rare on a real server;
here each is one deliberate frame (or one routed response: the Server-Sent Events of
GET /api/streams/<id>/events/ are served by the test, Last-Event-ID and all)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
  // Every EventSource the client makes, to see that each one ends closed.
  const Native = window.EventSource;
  window.eventSources = [];
  window.EventSource = class extends Native {
    constructor(...args) { super(...args); window.eventSources.push(this); }
  };
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
                return { text: s.text, shown: s.shown, reasoning: s.reasoning,
                         shownReasoning: s.shownReasoning, lastSeq: s.lastSeq,
                         status: s.status, driving: s.driving, verified: s.verified,
                         finishReason: s.finishReason, model: s.model, usage: s.usage }; }""",
            stream_id,
        )

    @property
    def sent(self) -> list[dict[str, Any]]:
        return self.page.evaluate("() => window.sent")

    def finals(self, count: int = 1) -> list[dict[str, Any]]:
        self.page.wait_for_function("(n) => window.finals.length >= n", arg=count)
        return self.page.evaluate("() => window.finals")


def chunk(seq: int, text: str, part: str = "text") -> dict[str, Any]:
    return {"type": "chunk", "seq": seq, "part": part, "text": text}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def final(
    text: str, last_seq: int, status: str = "done", reasoning: str = "", **overrides: Any
) -> dict[str, Any]:
    """The final status frame the server sends for ``text`` and ``reasoning``."""
    return {
        "type": "status",
        "status": status,
        "error": None,
        "last_seq": last_seq,
        "length": len(text),
        "sha256": digest(text),
        "reasoning_length": len(reasoning),
        "reasoning_sha256": digest(reasoning),
        "finish_reason": "stop",
        "model": "m-1",
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "reasoning_tokens": 2},
        **overrides,
    }


def resume(after: int) -> dict[str, Any]:
    return {"type": "resume", "stream_id": "s", "after": after}


def sse(*frames: dict[str, Any]) -> str:
    """An event stream as the server's SSE view writes it (a 50 ms retry for the test)."""
    out = ["retry: 50\n\n"]
    for frame in frames:
        frame = {"stream_id": "s", **frame}
        kind = frame["type"]
        event_id = frame.get("seq") if kind == "chunk" else frame.get("last_seq")
        head = f"id: {event_id}\n" if kind in ("chunk", "snapshot") else ""
        out.append(f"{head}event: {kind}\ndata: {json.dumps(frame)}\n\n")
    return "".join(out)


@dataclass
class EventsRequest:
    after: str


@pytest.fixture
def client(browser: Any) -> Iterator[Callable[..., Harness]]:
    pages: list[Any] = []

    def open_client(
        origin: str = SECURE,
        api: Callable[[int], dict] | None = None,
        events: Callable[[EventsRequest], str] | None = None,
    ) -> Harness:
        page = browser.new_page()
        pages.append(page)

        def serve(route: Any) -> None:
            url = urlparse(route.request.url)
            if url.path == "/stream-client.js":
                route.fulfill(path=MODULE, content_type="text/javascript")
            elif url.path.endswith("/events/") and events is not None:
                request = EventsRequest(parse_qs(url.query)["after"][0])
                route.fulfill(body=events(request), content_type="text/event-stream")
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
    state = harness.state()
    assert {k: state[k] for k in ("text", "shown", "lastSeq", "status", "driving")} == {
        "text": "Hello world. Two. Three.",
        "shown": "Hello world. Two. Three.",
        "lastSeq": 3,
        "status": "streaming",
        "driving": False,
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


# --- parts: the answer text and the reasoning ---------------------------------------------


def test_chunks_of_each_part_build_the_text_and_the_reasoning(client):
    harness = client()
    harness.follow()
    harness.frames(
        chunk(0, "Think, ", "reasoning"), chunk(1, "then answer. ", "reasoning"), chunk(2, "Hi.")
    )
    state = harness.state()
    assert (state["reasoning"], state["shownReasoning"]) == ("Think, then answer. ",) * 2
    assert (state["text"], state["shown"], state["lastSeq"]) == ("Hi.", "Hi.", 2)


def test_a_chunk_without_a_part_is_answer_text(client):
    harness = client()
    harness.follow()
    harness.frames({"type": "chunk", "seq": 0, "text": "Plain."})
    assert (harness.state()["text"], harness.state()["reasoning"]) == ("Plain.", "")


def test_a_snapshot_replaces_the_text_and_the_reasoning(client):
    harness = client()
    harness.follow(text="stale", reasoning="stale thoughts", lastSeq=0, status="streaming")
    harness.frames(
        {
            "type": "snapshot",
            "text": "Fresh.",
            "reasoning": "Fresh thoughts.",
            "last_seq": 4,
            "status": "streaming",
        }
    )
    state = harness.state()
    assert (state["text"], state["reasoning"], state["lastSeq"]) == (
        "Fresh.",
        "Fresh thoughts.",
        4,
    )


def test_the_driver_shows_its_tokens_of_each_part(client):
    harness = client()
    harness.follow(status="streaming", driving=True)
    harness.frames(
        {"type": "token", "part": "reasoning", "text": "Hmm. "},
        {"type": "token", "part": "text", "text": "Yes"},
        chunk(0, "Hmm. ", "reasoning"),
    )
    state = harness.state()
    assert (state["shownReasoning"], state["shown"]) == ("Hmm. ", "Yes")  # ahead of the save
    assert (state["reasoning"], state["text"], state["driving"]) == ("Hmm. ", "", True)


def test_a_driver_whose_saved_reasoning_differs_from_its_tokens_shows_the_saved_parts(client):
    harness = client()
    harness.follow(status="streaming", driving=True)
    harness.frames({"type": "token", "part": "reasoning", "text": "Hmm. "})
    harness.frames(chunk(0, "Hm? ", "reasoning"))
    state = harness.state()
    assert (state["driving"], state["shownReasoning"]) == (False, "Hm? ")


def test_a_final_status_verifies_the_reasoning_too(client):
    harness = client()
    harness.follow()
    harness.frames(chunk(0, "Thoughts.", "reasoning"), chunk(1, "Answer."))
    harness.frames(final("Answer.", 1, reasoning="Thoughts."))
    assert harness.finals() == [{"status": "done", "text": "Answer.", "verified": True}]


@pytest.mark.parametrize("origin", [SECURE, PLAIN])
def test_reasoning_that_fails_the_final_check_is_fetched_again_from_the_start(client, origin):
    harness = client(origin)
    harness.follow()
    # The text is right; the reasoning one letter short (a length any context can see).
    harness.frames(chunk(0, "Thougts.", "reasoning"), chunk(1, "Answer."))
    harness.frames(final("Answer.", 1, reasoning="Thoughts."))
    harness.page.wait_for_function("() => window.sent.length > 0")
    assert harness.sent == [resume(-1)]
    assert (harness.state()["text"], harness.state()["reasoning"]) == ("", "")


def test_reasoning_of_the_right_length_but_the_wrong_digest_is_fetched_again(client):
    harness = client(SECURE)
    harness.follow()
    harness.frames(chunk(0, "Thoughtz.", "reasoning"), chunk(1, "Answer."))
    harness.frames(final("Answer.", 1, reasoning="Thoughts."))
    harness.page.wait_for_function("() => window.sent.length > 0")
    assert harness.sent == [resume(-1)]


def test_a_final_status_leaves_its_finish_reason_model_and_usage_on_the_stream(client):
    harness = client()
    harness.follow()
    harness.frames(chunk(0, "Done."), final("Done.", 0, finish_reason="length"))
    harness.finals()
    state = harness.state()
    assert (state["finishReason"], state["model"], state["usage"]) == (
        "length",
        "m-1",
        {"prompt_tokens": 3, "completion_tokens": 5, "reasoning_tokens": 2},
    )


# --- over Server-Sent Events ---------------------------------------------------------------

ALL_CLOSED = "() => window.eventSources.every((source) => source.readyState === 2)"


def test_over_event_source_a_stream_goes_on_after_the_server_ends_a_response(client):
    requests: list[EventsRequest] = []

    def events(request: EventsRequest) -> str:
        requests.append(request)
        if len(requests) == 1:  # the first response, which the server ends early
            return sse(chunk(0, "Hm. ", "reasoning"), chunk(1, "One. "))
        # The browser reconnects with Last-Event-ID: 1 (Playwright's routing does not
        # show that header; the server suite checks it): a repeat is ignored anyway.
        return sse(chunk(1, "One. "), chunk(2, "Two."), final("One. Two.", 2, reasoning="Hm. "))

    harness = client(events=events)
    harness.follow()
    harness.page.evaluate("() => window.client.startEventStreams()")
    assert harness.finals() == [{"status": "done", "text": "One. Two.", "verified": True}]
    assert harness.state()["reasoning"] == "Hm. "
    # One EventSource, reconnected by the browser, not opened again by the client.
    assert len(requests) == 2
    assert harness.page.evaluate("() => window.eventSources.length") == 1
    assert harness.sent == []  # nothing went to the (absent) socket


def test_an_event_source_is_closed_at_its_streams_final_status(client):
    harness = client(events=lambda request: sse(chunk(0, "End."), final("End.", 0)))
    harness.follow()
    harness.page.evaluate("() => window.client.startEventStreams()")
    harness.finals()
    # Closed: the browser would otherwise reconnect to a finished stream for ever.
    harness.page.wait_for_function(ALL_CLOSED)
    assert harness.page.evaluate("() => window.client.events.size") == 0


def test_over_event_source_a_text_that_fails_the_final_check_is_fetched_from_the_start(client):
    requests: list[EventsRequest] = []

    def events(request: EventsRequest) -> str:
        requests.append(request)
        if len(requests) == 1:
            return sse(chunk(0, "Helo"), final("Hello", 0))
        return sse(
            {"type": "snapshot", "text": "Hello", "reasoning": "", "last_seq": 0, "status": "done"},
            final("Hello", 0),
        )

    harness = client(events=events)
    harness.follow()
    harness.page.evaluate("() => window.client.startEventStreams()")
    assert harness.finals() == [{"status": "done", "text": "Hello", "verified": True}]
    # A new EventSource from the start (no Last-Event-ID to carry the wrong text on).
    assert [r.after for r in requests] == ["-1", "-1"]
    assert harness.page.evaluate("() => window.eventSources.length") == 2
    harness.page.wait_for_function(ALL_CLOSED)


def test_a_stream_followed_later_gets_its_own_event_source(client):
    def events(request: EventsRequest) -> str:
        return sse(chunk(0, "Late."), final("Late.", 0))

    harness = client(events=events)
    harness.page.evaluate("() => window.client.startEventStreams()")
    harness.follow()
    assert harness.finals() == [{"status": "done", "text": "Late.", "verified": True}]


def test_without_event_source_the_client_polls_instead(client):
    body = {"stream_id": "s", "error": None, "snapshot": False, "reasoning": "Hm. "}
    harness = client(api=lambda after: {**body, "text": "Polled.", "last_seq": 0, "status": "done"})
    harness.follow()
    harness.page.evaluate("() => { delete window.EventSource; window.client.startEventStreams(); }")
    assert harness.finals() == [{"status": "done", "text": "Polled.", "verified": None}]
    assert harness.state()["reasoning"] == "Hm. "
    assert harness.page.evaluate("() => window.client.polling") is True
    harness.page.evaluate("() => window.client.stopEventStreams()")


READ_EVENTS = """
async (pieces) => {
  const { readEventStream } = await import('/stream-client.js');
  const encoder = new TextEncoder();
  const body = new ReadableStream({
    start(controller) {
      for (const piece of pieces) controller.enqueue(encoder.encode(piece));
      controller.close();
    },
  });
  const events = [];
  await readEventStream(new Response(body), (event) => events.push(event));
  return events;
}
"""


def test_an_event_stream_is_read_from_a_fetch_body_however_it_is_cut(client):
    harness = client()
    pieces = [
        "retry: 1000\n\n: keep-alive\n\nevent: mess",
        'age\ndata: {"a":\ndata: 1}\r',  # a CRLF cut between two reads
        "\n\r\nid: 7\nevent: chunk\ndata:no space\n\n",
        "data: last, not ended by a blank line",
    ]
    assert harness.page.evaluate(READ_EVENTS, pieces) == [
        {"type": "message", "data": '{"a":\n1}', "id": None},
        {"type": "chunk", "data": "no space", "id": "7"},
    ]
