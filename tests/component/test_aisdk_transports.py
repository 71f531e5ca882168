"""streaming.aisdk's transports on real streams: the UI message SSE response of a driver
or a reader, and the frames of one WebSocketChatTransport request."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction

from streaming import Finish, services
from streaming.aisdk import (
    UI_MESSAGE_STREAM_HEADERS,
    ui_message_replay,
    ui_message_response,
    websocket_chat_frames,
)
from streaming.core.lifecycle import Status
from streaming.driver import drive_in_background
from streaming.events import drive_frames
from streaming.models import Chunk, Stream
from streaming.services import ChunkWrite
from tests.component.app import words
from tests.component.test_aisdk import assemble, joined, received
from tests.fixtures import parts_of

pytestmark = pytest.mark.django_db(transaction=True)

GROUP = "room.ui"
REASONING = ["Think ", "a ", "bit. "]
TEXT = ["One. ", "Two. ", "Three. ", "Four. ", "Five."]
USAGE = {"prompt_tokens": 2, "completion_tokens": 8, "reasoning_tokens": 3}


@pytest.fixture
async def stream(amake_stream):
    return await amake_stream(group=GROUP, claimed=True)


def source(pause: float = 0.0):
    return words(TEXT, reasoning=REASONING, pause=pause, finish={"finish_reason": "stop"})


async def sse_chunks(response) -> list[Any]:
    """The UI message chunks of an SSE body, then "[DONE]"; keep-alives as "keep-alive"."""
    body = b"".join([part async for part in response.streaming_content]).decode()
    out: list[Any] = []
    for event in body.split("\n\n")[:-1]:
        if event.startswith(":"):
            out.append("keep-alive")
        else:
            data = event.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def persisted(stream) -> Stream:
    return await Stream.objects.aget(id=stream.id)


async def test_a_drivers_response_starts_at_once_and_ends_with_finish_then_done(stream):
    sid = str(stream.id)
    frames = drive_frames(sid, GROUP, source())
    response = ui_message_response(frames, message_id="m", stream_id=sid, group=GROUP, driving=True)
    assert {k: response[k] for k in UI_MESSAGE_STREAM_HEADERS} == UI_MESSAGE_STREAM_HEADERS
    chunks = await sse_chunks(response)
    assert chunks[0] == {"type": "start", "messageId": "m", "messageMetadata": {"stream_id": sid}}
    assert [c["type"] for c in chunks[-2:-1]] == ["finish"] and chunks[-1] == "[DONE]"
    message, row = assemble(chunks[:-1]), await persisted(stream)
    assert [(p["type"], p["text"]) for p in message["parts"]] == [
        ("reasoning", row.reasoning),
        ("text", row.text),
    ]


async def test_a_drivers_response_outlasting_its_bounded_time_goes_on_to_the_end(stream, settings):
    """The event stream's bound ends the driver's tokens; the rest comes from the
    persisted chunks, after what the tokens showed, none twice."""
    settings.STREAMING_SSE_MAX_SECONDS = 0.25
    sid = str(stream.id)
    frames = drive_frames(sid, GROUP, source(pause=0.05))
    chunks = await sse_chunks(
        ui_message_response(frames, message_id="m", stream_id=sid, group=GROUP, driving=True)
    )
    message, row = assemble([c for c in chunks[:-1] if c != "keep-alive"]), await persisted(stream)
    assert (joined(message, "reasoning"), joined(message, "text")) == (row.reasoning, row.text)
    assert [p["type"] for p in message["parts"]] == ["reasoning", "text"]
    assert row.text == "".join(TEXT) and message["end"] == "finish"


async def test_a_silence_sends_a_keep_alive_comment(stream, settings):
    settings.STREAMING_SSE_KEEPALIVE_SECONDS = 0.05
    sid = str(stream.id)
    frames = drive_frames(sid, GROUP, words(["Late."], pause=0.3))
    chunks = await sse_chunks(
        ui_message_response(frames, message_id="m", stream_id=sid, group=GROUP, driving=True)
    )
    assert chunks[1] == "keep-alive"


@sync_to_async
def final_stream(owner, *batches, report=None) -> Stream:
    stream = services.stream_create(group=GROUP, owner=owner, claimed=True)
    with transaction.atomic():
        services.chunks_append(writes=[ChunkWrite(str(stream.id), 0, list(batches))])
        services.stream_end(
            stream_id=stream.id,
            status=Status.DONE,
            written=parts_of(batches),
            first_seq=len(batches),
            report=report,
        )
    return stream


async def test_a_replay_of_a_final_stream_is_one_reasoning_part_and_one_text_part(owner):
    stream = await final_stream(
        owner,
        ("reasoning", "R1 "),
        ("reasoning", "R2"),
        ("text", "T1 "),
        ("text", "T2"),
        report=Finish("stop", "m-1", USAGE),
    )
    response = await ui_message_replay(str(stream.id), GROUP, message_id="7")
    chunks = await sse_chunks(response)
    message = assemble(chunks[:-1])
    assert [(p["type"], p["text"]) for p in message["parts"]] == [
        ("reasoning", "R1 R2"),
        ("text", "T1 T2"),
    ]
    assert message["metadata"]["usage"] == USAGE and message["id"] == "7"


async def ws_frames(stream, **options: Any) -> list[dict[str, Any]]:
    frames = websocket_chat_frames(str(stream.id), GROUP, request_id="r", message_id="m", **options)
    return [frame async for frame in frames]


async def test_a_websocket_request_numbers_a_live_answer_from_zero_and_ends(stream):
    drive_in_background(str(stream.id), source(pause=0.01))
    frames = await ws_frames(stream)
    assert [f["sequence"] for f in frames[:-1]] == list(range(len(frames) - 1))
    assert frames[-1] == {"type": "end", "requestId": "r"}
    message, row = assemble(received(frames)), await persisted(stream)
    assert (joined(message, "reasoning"), joined(message, "text")) == (row.reasoning, row.text)


async def test_a_websocket_request_outlasting_the_bounded_time_numbers_on_exactly(stream, settings):
    settings.STREAMING_SSE_MAX_SECONDS = 0.2
    drive_in_background(str(stream.id), source(pause=0.05))
    frames = await ws_frames(stream)
    assert [f["sequence"] for f in frames[:-1]] == list(range(len(frames) - 1))
    assert joined(assemble(received(frames)), "text") == "".join(TEXT)


async def test_a_websocket_resume_after_a_last_sequence_is_the_rest_of_the_whole_reply(owner):
    stream = await final_stream(owner, ("reasoning", "R "), ("text", "T1 "), ("text", "T2"))
    whole = await ws_frames(stream)
    rest = await ws_frames(stream, last_sequence=3)
    assert rest == [f for f in whole if f["type"] == "end" or f["sequence"] > 3]


async def test_a_websocket_resume_after_a_last_sequence_of_purged_chunks_is_an_error(owner):
    stream = await final_stream(owner, ("text", "T1 "), ("text", "T2"))
    await Chunk.objects.filter(stream_id=stream.id).adelete()
    frames = await ws_frames(stream, last_sequence=1)
    assert [f["type"] for f in frames] == ["error"]
    assert "without lastSequence" in frames[0]["errorText"]
    whole = await ws_frames(stream)
    assert joined(assemble(received(whole)), "text") == "T1 T2"
