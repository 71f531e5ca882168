"""The AI SDK's UI message stream, encoded from the component's frames (no database)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming.aisdk import (
    FRAME_GAP,
    RESUME_INEXACT,
    SSE_DONE,
    UIMessageStreamEncoder,
    WebSocketChunkEncoder,
    sse_event,
    ws_error,
    ws_no_active,
    ws_start,
)
from streaming.errors import StreamError

SID = "s-1"
MID = "m-1"
START = {"type": "start", "messageId": MID, "messageMetadata": {"stream_id": SID}}


def token(part: str, text: str) -> dict[str, Any]:
    return {"type": "token", "stream_id": SID, "part": part, "text": text}


def chunk(seq: int, part: str, text: str) -> dict[str, Any]:
    return {"type": "chunk", "stream_id": SID, "seq": seq, "part": part, "text": text}


def snapshot(text: str, reasoning: str, last_seq: int, status: str = "streaming") -> dict:
    return {
        "type": "snapshot",
        "stream_id": SID,
        "text": text,
        "reasoning": reasoning,
        "last_seq": last_seq,
        "status": status,
    }


def status(
    value: str, last_seq: int | None = None, finish_reason: str | None = None, error=None
) -> dict[str, Any]:
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "reasoning_tokens": 2}
    return {
        "type": "status",
        "stream_id": SID,
        "status": value,
        "error": error,
        "last_seq": last_seq,
        "finish_reason": finish_reason,
        "model": "demo-1",
        "usage": usage if value == "done" else None,
    }


def encode(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    encoder = UIMessageStreamEncoder(message_id=MID, stream_id=SID)
    return [c for frame in frames for c in encoder.encode(frame)]


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What the SDK's processUIMessageStream builds from these chunk types, as strictly:
    a delta or end needs its part's start."""
    message: dict[str, Any] = {"id": None, "metadata": {}, "parts": [], "end": None}
    active: dict[tuple[str, str], dict[str, Any]] = {}
    for c in chunks:
        kind, _, step = c["type"].rpartition("-")
        if c["type"] in ("start", "finish", "message-metadata"):
            message["metadata"].update(c.get("messageMetadata") or {})
            message["id"] = c.get("messageId", message["id"])
            message["end"] = "finish" if c["type"] == "finish" else message["end"]
        elif c["type"] in ("abort", "error"):
            message["end"] = c["type"]
        elif step == "start":
            assert (kind, c["id"]) not in active
            active[kind, c["id"]] = {"type": kind, "text": "", "state": "streaming"}
            message["parts"].append(active[kind, c["id"]])
        elif step == "delta":
            active[kind, c["id"]]["text"] += c["delta"]
        else:
            active.pop((kind, c["id"]))["state"] = "done"
    return message


def joined(message: dict[str, Any], kind: str) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == kind)


def received(frames: list[dict[str, Any]], last: int = -1) -> list[dict[str, Any]]:
    """The chunks WebSocketChatTransport passes on: repeats ignored, a gap is an error."""
    chunks = []
    for frame in frames:
        if frame["type"] == "chunk" and frame["sequence"] > last:
            assert frame["sequence"] == last + 1, "Out-of-order WebSocket chat chunk sequence."
            last = frame["sequence"]
            chunks.append(frame["chunk"])
    return chunks


THINK_THEN_ANSWER = [
    START,
    {"type": "reasoning-start", "id": "reasoning-0"},
    {"type": "reasoning-delta", "id": "reasoning-0", "delta": "Let me "},
    {"type": "reasoning-delta", "id": "reasoning-0", "delta": "think."},
    {"type": "reasoning-end", "id": "reasoning-0"},
    {"type": "text-start", "id": "text-0"},
    {"type": "text-delta", "id": "text-0", "delta": "Hello"},
    {"type": "text-delta", "id": "text-0", "delta": " world."},
    {"type": "text-end", "id": "text-0"},
    {
        "type": "finish",
        "messageMetadata": {
            "finish_reason": "stop",
            "model": "demo-1",
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "reasoning_tokens": 2},
        },
        "finishReason": "stop",
    },
]
PIECES = [("reasoning", "Let me "), ("reasoning", "think."), ("text", "Hello"), ("text", " world.")]


def test_driver_tokens_become_start_one_part_each_and_finish():
    frames = [token(part, text) for part, text in PIECES]
    assert encode([*frames, status("done", 3, "stop")]) == THINK_THEN_ANSWER


def test_persisted_chunks_encode_as_the_tokens_they_persist():
    frames = [chunk(seq, part, text) for seq, (part, text) in enumerate(PIECES)]
    assert encode([*frames, status("done", 3, "stop")]) == THINK_THEN_ANSWER


def test_a_snapshot_is_one_reasoning_part_and_one_text_part():
    chunks = encode(
        [snapshot("Hello world.", "Let me think.", 3, "done"), status("done", 3, "stop")]
    )
    assert [c["type"] for c in chunks] == [
        "start",
        *("reasoning-start", "reasoning-delta", "reasoning-end"),
        *("text-start", "text-delta", "text-end"),
        "finish",
    ]
    message = assemble(chunks)
    assert [(p["type"], p["text"], p["state"]) for p in message["parts"]] == [
        ("reasoning", "Let me think.", "done"),
        ("text", "Hello world.", "done"),
    ]


def test_chunks_after_a_snapshot_continue_its_open_part():
    chunks = encode([snapshot("Hel", "Hmm", 1), chunk(2, "text", "lo"), status("done", 2)])
    assert [c["type"] for c in chunks[-3:]] == ["text-delta", "text-end", "finish"]
    assert chunks[-3]["id"] == chunks[-2]["id"] == "text-0"


def test_a_snapshot_after_chunks_adds_only_what_follows_them():
    frames = [chunk(0, "text", "Hel"), snapshot("Hello", "", 1), chunk(2, "text", "!")]
    assert joined(assemble(encode([*frames, status("done", 2)])), "text") == "Hello!"


@pytest.mark.parametrize(
    ("reason", "sdk_reason"),
    [("stop", "stop"), ("length", "length"), ("content_filter", "content-filter"), (None, None)],
)
def test_done_finishes_with_the_sdk_finish_reason_and_the_metadata(reason, sdk_reason):
    finish = encode([status("done", -1, reason)])[-1]
    assert finish["type"] == "finish"
    assert finish.get("finishReason") == sdk_reason
    assert finish["messageMetadata"]["finish_reason"] == reason
    assert finish["messageMetadata"]["model"] == "demo-1"


@pytest.mark.parametrize(
    ("value", "error", "last"),
    [
        ("cancelled", None, {"type": "abort"}),
        (
            "error",
            "The LLM server failed.",
            {"type": "error", "errorText": "The LLM server failed."},
        ),
        ("timeout", None, {"type": "error", "errorText": "The answer timed out."}),
        ("error", None, {"type": "error", "errorText": "The answer failed."}),
    ],
)
def test_a_stream_that_did_not_finish_ends_with_abort_or_error(value, error, last):
    chunks = encode([token("text", "Hi"), status(value, 0, value, error)])
    assert chunks[-3:] == [
        {"type": "text-end", "id": "text-0"},
        {
            "type": "message-metadata",
            "messageMetadata": {"finish_reason": value, "model": "demo-1", "usage": None},
        },
        last,
    ]


def test_a_part_that_starts_again_after_the_other_opens_a_new_part():
    frames = [token("reasoning", "a"), token("text", "b"), token("reasoning", "c")]
    message = assemble(encode([*frames, status("done")]))
    assert [(p["type"], p["text"]) for p in message["parts"]] == [
        ("reasoning", "a"),
        ("text", "b"),
        ("reasoning", "c"),
    ]
    assert all(p["state"] == "done" for p in message["parts"])


def test_empty_text_opens_no_part():
    chunks = encode([token("reasoning", ""), chunk(0, "text", ""), status("done")])
    assert [c["type"] for c in chunks] == ["start", "finish"]


def test_a_driver_skips_the_chunks_that_repeat_its_tokens():
    frames = [token("text", "Hi"), chunk(0, "text", "Hi"), snapshot("Hi", "", 0)]
    assert joined(assemble(encode([*frames, status("done", 0)])), "text") == "Hi"


@pytest.mark.parametrize(
    "persisted",
    [
        [chunk(0, "reasoning", "Let me think."), chunk(1, "text", "Hello world.")],
        [snapshot("Hello", "Let me think.", 1), chunk(2, "text", " world.")],
    ],
)
def test_a_driver_whose_tokens_stop_goes_on_with_the_persisted_text_after_them(persisted):
    encoder = UIMessageStreamEncoder(message_id=MID, stream_id=SID)
    shown = [token("reasoning", "Let me think."), token("text", "Hel")]
    chunks = [c for frame in shown for c in encoder.encode(frame)]
    encoder.follow_persisted()
    ends = status("done", persisted[-1].get("seq", 1), "stop")
    chunks += [c for frame in [*persisted, ends] for c in encoder.encode(frame)]
    message = assemble(chunks)
    assert [(p["type"], p["text"]) for p in message["parts"]] == [
        ("reasoning", "Let me think."),
        ("text", "Hello world."),
    ]


def test_a_drivers_encoder_skips_the_chunks_that_come_before_its_tokens():
    """A driver's response catches up from the database while its tokens queue: a chunk
    may come first. The tokens carry the text all the same."""
    encoder = UIMessageStreamEncoder(message_id=MID, stream_id=SID, source="token")
    frames = [chunk(0, "text", "Hi"), token("text", "Hi"), status("done", 0)]
    assert joined(assemble([c for f in frames for c in encoder.encode(f)]), "text") == "Hi"


def test_a_repeated_chunk_is_skipped_and_a_missing_one_is_a_gap():
    encoder = UIMessageStreamEncoder(message_id=MID, stream_id=SID)
    encoder.encode(chunk(0, "text", "a"))
    assert encoder.encode(chunk(0, "text", "a")) == []
    with pytest.raises(StreamError) as gap:
        encoder.encode(chunk(2, "text", "c"))
    assert gap.value.code == FRAME_GAP


def test_a_final_status_past_the_last_encoded_chunk_is_a_gap():
    encoder = UIMessageStreamEncoder(message_id=MID, stream_id=SID)
    encoder.encode(chunk(0, "text", "a"))
    with pytest.raises(StreamError) as gap:
        encoder.encode(status("done", 1))
    assert gap.value.code == FRAME_GAP


def test_tokens_after_persisted_frames_are_refused():
    encoder = UIMessageStreamEncoder(message_id=MID, stream_id=SID)
    encoder.encode(chunk(0, "text", "a"))
    with pytest.raises(ValueError, match="one source"):
        encoder.encode(token("text", "b"))


def test_frames_of_other_streams_and_after_the_end_add_nothing():
    encoder = UIMessageStreamEncoder(message_id=MID, stream_id=SID)
    assert encoder.encode(chunk(0, "text", "a") | {"stream_id": "other"}) == []
    assert encoder.encode({"type": "message", "message": {"id": 1}}) == []
    assert encoder.encode(status("streaming")) == [START]
    assert encoder.encode(status("done")) != []
    assert encoder.encode(status("done")) == []
    assert encoder.start() == []


def test_sse_frames_each_chunk_as_a_data_event_and_ends_with_done_once():
    encoder = UIMessageStreamEncoder(message_id=MID, stream_id=SID)
    body = encoder.sse(token("text", "é")) + encoder.sse(status("cancelled"))
    assert body.endswith(b'data: {"type":"abort"}\n\n' + SSE_DONE)
    assert encoder.sse(status("cancelled")) == b""
    events = body.decode().split("\n\n")
    assert events[-1] == ""
    assert [json.loads(e.removeprefix("data: ")) for e in events[:-2]][1] == {
        "type": "text-start",
        "id": "text-0",
    }
    assert sse_event({"type": "text-delta", "id": "t", "delta": "é"}).decode() == (
        'data: {"type":"text-delta","id":"t","delta":"é"}\n\n'
    )


def ws_encoder(last_sequence: int | None = None) -> WebSocketChunkEncoder:
    return WebSocketChunkEncoder(
        request_id="r-1", message_id=MID, stream_id=SID, last_sequence=last_sequence
    )


def ws_encode(frames: list[dict[str, Any]], last_sequence: int | None = None) -> list[dict]:
    encoder = ws_encoder(last_sequence)
    return [f for frame in frames for f in encoder.encode(frame)]


PERSISTED = [chunk(seq, part, text) for seq, (part, text) in enumerate(PIECES)]


def test_ws_chunks_are_numbered_from_zero_and_end_after_the_terminal_chunk():
    frames = ws_encode([*PERSISTED, status("done", 3, "stop")])
    assert [f["sequence"] for f in frames[:-1]] == list(range(len(THINK_THEN_ANSWER)))
    assert [f["chunk"] for f in frames[:-1]] == THINK_THEN_ANSWER
    assert {f["requestId"] for f in frames} == {"r-1"}
    assert frames[-1] == {"type": "end", "requestId": "r-1"}


@pytest.mark.parametrize("last_sequence", range(-1, len(THINK_THEN_ANSWER) + 1))
def test_ws_resume_sends_exactly_the_chunks_after_last_sequence(last_sequence):
    frames = ws_encode([*PERSISTED, status("done", 3, "stop")], last_sequence)
    assert [f["chunk"] for f in frames[:-1]] == THINK_THEN_ANSWER[last_sequence + 1 :]
    assert received(frames, last_sequence) == THINK_THEN_ANSWER[last_sequence + 1 :]


def test_ws_start_is_sequence_zero_unless_the_client_holds_it():
    assert ws_encoder().start()[0] == {
        "type": "chunk",
        "requestId": "r-1",
        "sequence": 0,
        "chunk": START,
    }
    assert ws_encoder(0).start() == []


def test_ws_refuses_tokens():
    with pytest.raises(ValueError, match="not tokens"):
        ws_encode([token("text", "a")])


def test_ws_replays_a_snapshot_whole():
    frames = ws_encode([snapshot("Hello", "Hmm", 3, "done"), status("done", 3)])
    assert joined(assemble(received(frames)), "text") == "Hello"


@pytest.mark.parametrize(
    ("last_sequence", "frames"),
    [(2, [snapshot("Hello", "", 3)]), (None, [PERSISTED[0], snapshot("Let me think.", "", 3)])],
)
def test_ws_cannot_number_a_snapshot_after_last_sequence_or_after_chunks(last_sequence, frames):
    with pytest.raises(StreamError) as inexact:
        ws_encode(frames, last_sequence)
    assert inexact.value.code == RESUME_INEXACT


def test_ws_request_frames():
    assert ws_start("r") == {"type": "start", "requestId": "r"}
    assert ws_no_active("r") == {"type": "no-active", "requestId": "r"}
    assert ws_error("r", "No.") == {"type": "error", "requestId": "r", "errorText": "No."}


def part_text(pieces: list[tuple[str, str]], part: str) -> str:
    return "".join(text for kind, text in pieces if kind == part)


piece_lists = st.lists(
    st.tuples(st.sampled_from(["reasoning", "text"]), st.text(max_size=4)), max_size=10
)
finals = st.sampled_from(["done", "cancelled", "error", "timeout"])


@given(piece_lists, finals, st.data())
def test_every_encoding_assembles_to_the_same_reasoning_and_text(pieces, final, data):
    """Live tokens, persisted chunks, a snapshot at any point, and a WebSocket resume
    after any lastSequence, all give the parts their text, in one part each when the
    model thinks first."""
    end = status(final, len(pieces) - 1, "stop" if final == "done" else final)
    tokens = [token(part, text) for part, text in pieces]
    chunks = [chunk(seq, part, text) for seq, (part, text) in enumerate(pieces)]
    cut = data.draw(st.integers(-1, len(pieces) - 1), label="snapshot last_seq")
    upto = pieces[: cut + 1]
    snap = snapshot(part_text(upto, "text"), part_text(upto, "reasoning"), cut)
    whole = ws_encode([*chunks, end])
    last_sequence = data.draw(st.integers(-1, len(whole) - 1), label="lastSequence")
    resumed = ws_encode([*chunks, end], last_sequence)
    encodings = {
        "tokens": encode([*tokens, end]),
        "chunks": encode([*chunks, end]),
        "snapshot": encode([snap, *chunks[cut + 1 :], end]),
        "ws": received(whole),
        "ws resumed": received(whole)[: last_sequence + 1] + received(resumed, last_sequence),
    }
    expected = (part_text(pieces, "reasoning"), part_text(pieces, "text"))
    terminal = {"done": "finish", "cancelled": "abort"}.get(final, "error")
    for name, encoded in encodings.items():
        message = assemble(encoded)
        assert (joined(message, "reasoning"), joined(message, "text")) == expected, name
        assert (message["id"], message["end"]) == (MID, terminal), name
        assert all(p["state"] == "done" for p in message["parts"]), name
    assert encodings["ws"] == encodings["chunks"] == encodings["ws resumed"]
    if [p for p, t in pieces if t] == sorted(p for p, t in pieces if t):  # thinks first
        for encoded in encodings.values():
            kinds = [p["type"] for p in assemble(encoded)["parts"]]
            assert kinds == [k for k in ("reasoning", "text") if k in kinds]
