"""The real AI SDK (npm ``ai``, through tests/aisdk/assemble.mjs) reads what
streaming.aisdk encodes: SSE framing, chunk schema, WebSocket sequences, assembled parts."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streaming.aisdk import UIMessageStreamEncoder, WebSocketChunkEncoder, ws_start
from tests.fixtures import require

ROOT = Path(__file__).resolve().parents[2]
SID = "0b7c6f1e-stream"
MID = "42"
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "reasoning_tokens": 4}


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    require(node is not None, "node is not installed (Node 20+ runs the AI SDK harness)")
    require((ROOT / "node_modules" / "ai").is_dir(), "node_modules is missing: run `npm ci`")
    return str(node)


def sdk(node: str, mode: str, stdin: bytes) -> list[dict[str, Any]]:
    """The JSON lines assemble.mjs prints for ``stdin``."""
    done = subprocess.run(
        [node, str(ROOT / "tests" / "aisdk" / "assemble.mjs"), mode],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


def parts(lines: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    message = lines[-1]["message"]
    return [(p["type"], p["text"], p["state"]) for p in message["parts"]]


def frame(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "stream_id": SID, **fields}


def final(status: str, last_seq: int, **fields: Any) -> dict[str, Any]:
    reason = "stop" if status == "done" else status
    values = {"error": None, "finish_reason": reason, "model": "demo-1", "usage": None}
    return frame("status", status=status, last_seq=last_seq, **(values | fields))


PIECES = [
    ("reasoning", "The user greets "),
    ("reasoning", "me."),
    ("text", "Hello, "),
    ("text", "you! é😀"),
]
PERSISTED = [
    frame("chunk", seq=seq, part=part, text=text) for seq, (part, text) in enumerate(PIECES)
]
DONE = final("done", 3, usage=USAGE)
EXPECTED_PARTS = [
    ("reasoning", "The user greets me.", "done"),
    ("text", "Hello, you! é😀", "done"),
]


def sse_body(frames: list[dict[str, Any]]) -> bytes:
    encoder = UIMessageStreamEncoder(message_id=MID, stream_id=SID)
    return b"".join(encoder.sse(f) for f in frames)


def test_the_sdk_assembles_a_driven_answer_into_one_reasoning_and_one_text_part(node):
    tokens = [frame("token", part=part, text=text) for part, text in PIECES]
    lines = sdk(node, "sse", sse_body([*tokens, *PERSISTED, DONE]))
    assert parts(lines) == EXPECTED_PARTS
    message = lines[-1]["message"]
    assert message["id"] == MID
    assert message["metadata"] == {
        "stream_id": SID,
        "finish_reason": "stop",
        "model": "demo-1",
        "usage": USAGE,
    }
    assert not [line for line in lines if "error" in line]


def test_the_sdk_assembles_a_replay_from_a_snapshot_the_same(node):
    snapshot = frame(
        "snapshot", text="Hello, ", reasoning="The user greets me.", last_seq=2, status="streaming"
    )
    lines = sdk(node, "sse", sse_body([snapshot, PERSISTED[3], DONE]))
    assert parts(lines) == EXPECTED_PARTS


def test_the_sdk_sees_a_cancelled_answer_abort_and_a_failed_one_error(node):
    hello = frame("chunk", seq=0, part="text", text="Hello, ")
    cancelled = sdk(node, "sse", sse_body([hello, final("cancelled", 0)]))
    assert parts(cancelled) == [("text", "Hello, ", "done")]
    assert cancelled[-2] == {"chunk": {"type": "abort"}}
    assert cancelled[-1]["message"]["metadata"]["finish_reason"] == "cancelled"
    failed = sdk(node, "sse", sse_body([final("error", -1, error="The LLM server failed.")]))
    assert {"error": "The LLM server failed."} in failed


def ws_lines(frames: list[dict[str, Any]], last_sequence: int | None = None) -> bytes:
    encoder = WebSocketChunkEncoder(
        request_id="r", message_id=MID, stream_id=SID, last_sequence=last_sequence
    )
    out = [ws_start("r")] + [f for each in frames for f in encoder.encode(each)]
    return "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in out).encode()


@pytest.mark.parametrize("mode", ["ws-send", "ws-resume"])
def test_websocket_chat_transport_accepts_the_sequences_and_assembles_the_parts(node, mode):
    lines = sdk(node, mode, ws_lines([*PERSISTED, DONE]))
    assert parts(lines) == EXPECTED_PARTS
    assert not [line for line in lines if "error" in line]


def test_websocket_chat_transport_rejects_a_resume_numbered_after_last_sequence(node):
    """The transport always resumes from the start: a reply that skips what the client
    holds is a gap to it (which is why it never sends lastSequence)."""
    lines = sdk(node, "ws-resume", ws_lines([*PERSISTED, DONE], last_sequence=2))
    assert {"error": "Out-of-order WebSocket chat chunk sequence."} in lines
