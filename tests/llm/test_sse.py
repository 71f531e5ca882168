"""SSEDecoder on its own: the event-stream rules, and that how the bytes are split into
reads never changes the events."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatproject.llm.sse import ServerSentEvent, SSEDecoder


def decode(*reads: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [event for read in reads for event in decoder.feed(read)]


def message(data: bytes) -> ServerSentEvent:
    return ServerSentEvent("message", data)


@pytest.mark.parametrize(
    ("stream", "events"),
    [
        (b'data: {"a": 1}\n\n', [message(b'{"a": 1}')]),
        (b'data:{"a": 1}\n\n', [message(b'{"a": 1}')]),
        (b"data:  two spaces\n\n", [message(b" two spaces")]),  # only one space is eaten
        (b"data: x\r\n\r\ndata: y\r\n\r\n", [message(b"x"), message(b"y")]),
        (b"data: x\r\rdata: y\r\r", [message(b"x"), message(b"y")]),
        (b": keep-alive\n\ndata: x\n\n:another\n\n", [message(b"x")]),
        (b"event: delta\nid: 7\nretry: 500\ndata: x\n\n", [ServerSentEvent("delta", b"x")]),
        (b"event: delta\ndata: x\n\ndata: y\n\n", [ServerSentEvent("delta", b"x"), message(b"y")]),
        (b'data: {\ndata: "a": 1}\n\n', [message(b'{\n"a": 1}')]),
        (b"data: [DONE]\n\n", [message(b"[DONE]")]),
        (b"data\n\n", [message(b"")]),  # a bare field name: an empty data line
        (b"data:\ndata:\n\n", [message(b"\n")]),
        (b"event: ping\nid: 1\n\n", []),  # no data: nothing to dispatch
        (b"event: ping\n\ndata: x\n\n", [message(b"x")]),  # the type ends with its event
        (b"unknown: field\ndata: x\nfoo\n\n", [message(b"x")]),
        (b"\xef\xbb\xbfdata: x\n\n", [message(b"x")]),  # a leading BOM is dropped
        (b"data: x\n\ndata: never ended", [message(b"x")]),  # no blank line: dropped
        ("data: é 🎉\n\n".encode(), [message("é 🎉".encode())]),
    ],
    ids=[
        "space",
        "no space",
        "two spaces",
        "CRLF",
        "CR",
        "comments",
        "event id retry",
        "event type resets",
        "two data lines",
        "DONE",
        "bare data",
        "empty data lines",
        "no data",
        "type without data resets",
        "unknown fields",
        "BOM",
        "unfinished event",
        "UTF-8",
    ],
)
def test_the_event_stream_rules(stream: bytes, events: list[ServerSentEvent]) -> None:
    assert decode(stream) == events


def test_an_event_split_across_reads_is_dispatched_at_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"da") == []
    assert decoder.feed(b'ta: {"a"') == []
    assert decoder.feed(b": 1}\n") == []
    assert decoder.feed(b"\n") == [message(b'{"a": 1}')]


def test_a_utf8_character_split_across_reads_arrives_whole() -> None:
    encoded = "data: é🎉\n\n".encode()
    for cut in range(len(encoded) + 1):
        assert decode(encoded[:cut], encoded[cut:]) == [message("é🎉".encode())], cut


def test_a_crlf_split_across_reads_ends_one_line() -> None:
    assert decode(b"data: x\r", b"\n\r", b"\ndata: y\r\n\r\n") == [message(b"x"), message(b"y")]


def test_a_lone_cr_at_the_end_of_a_read_ends_its_line_at_once() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\r") == [message(b"x")]


def test_a_bom_split_across_reads_is_dropped() -> None:
    assert decode(b"\xef", b"\xbb", b"\xbfdata: x\n\n") == [message(b"x")]


# --- any split of a valid stream gives the same events --------------------------------


@dataclass
class Event:
    kind: str | None  # an "event:" line's value, if any
    data: list[str]
    ident: str | None
    comment: str | None


line_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=12
)
events = st.builds(
    Event,
    kind=st.none() | st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    data=st.lists(line_text, max_size=3),
    ident=st.none() | st.from_regex(r"[0-9]{1,3}", fullmatch=True),
    comment=st.none() | line_text,
)


def field_lines(event: Event, spaced: list[bool]) -> list[str]:
    lines = [] if event.comment is None else [f":{event.comment}"]
    if event.kind is not None:
        lines.append(f"event: {event.kind}")
    for value, space in zip(event.data, spaced, strict=False):
        # Without the space only when the value does not start with one (it would be eaten).
        lines.append(f"data: {value}" if space or value.startswith(" ") else f"data:{value}")
    if event.ident is not None:
        lines.append(f"id: {event.ident}")
    return lines


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[ServerSentEvent]]:
    """A valid event stream and the events it holds (the last one may be unfinished)."""
    ends = draw(st.sampled_from([("\n", "\r\n"), ("\r",)]))
    lines: list[str] = []
    expected = []
    drawn = draw(st.lists(events, max_size=6))
    for event in drawn:
        lines += field_lines(event, draw(st.lists(st.booleans(), min_size=3, max_size=3)))
        lines.append("")
        if event.data:
            joined = "\n".join(event.data).encode()
            expected.append(ServerSentEvent(event.kind or "message", joined))
    if draw(st.booleans()):  # an event the stream ends in the middle of
        lines += field_lines(draw(events), [True] * 3)
    text = "".join(line + draw(st.sampled_from(ends)) for line in lines)
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + text).encode(), expected


@given(streams(), st.data())
def test_any_split_into_reads_yields_the_same_events(
    stream: tuple[bytes, list[ServerSentEvent]], data: st.DataObject
) -> None:
    encoded, expected = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=12)))
    reads = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=True)]
    assert decode(encoded) == expected
    assert decode(*reads) == expected


@given(streams())
def test_byte_by_byte_yields_the_same_events(stream: tuple[bytes, list[ServerSentEvent]]) -> None:
    encoded, expected = stream
    assert decode(*(encoded[i : i + 1] for i in range(len(encoded)))) == expected
