"""The frames the component sends, the group event that carries them, and their
announcement to a group.

Frames are plain dicts, the same JSON on every transport: websocket frames as they are,
Server-Sent Events as each event's ``data``, AI SDK chunks encoded from them.
Announcements go out after the commit of the rows they describe (Zulip's rule), so a
client that receives a frame can always read what it announces.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from channels.layers import get_channel_layer

from streaming.core.batching import Batch
from streaming.core.deltas import Delta
from streaming.metrics import FRAMES_DROPPED, LAYER_MESSAGES
from streaming.outages import LAYER_ERRORS

if TYPE_CHECKING:
    from streaming.models import Stream

logger = logging.getLogger(__name__)

Frame = dict[str, Any]

#: For what orjson refuses (a lone surrogate, which JSON allows, or an integer beyond
#: 64 bits). Unicode as is, not \uXXXX, as orjson writes it: a CJK or emoji text is a
#: third to half the bytes.
_FALLBACK_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

#: The component's group event; ``StreamConsumerMixin.stream_frames`` and the
#: process hub handle it. One event per write, however many chunks it holds.
FRAMES_EVENT = "stream.frames"


def encode_frame(frame: Frame) -> str:
    """A frame's JSON, compact, as every transport sends it: orjson, a tenth of the
    standard library's encoder's time for a token's frame (which the driver's client
    gets for every token)."""
    try:
        return orjson.dumps(frame).decode()
    except orjson.JSONEncodeError:
        return _FALLBACK_ENCODER.encode(frame)


def token_frame(stream_id: str, delta: Delta) -> Frame:
    return {"type": "token", "stream_id": stream_id, "part": delta.part, "text": delta.text}


def chunk_frame(stream_id: str, seq: int, part: str, text: str) -> Frame:
    return {"type": "chunk", "stream_id": stream_id, "seq": seq, "part": part, "text": text}


def chunk_frames(stream_id: str, first_seq: int, batches: Sequence[Batch]) -> list[Frame]:
    return [
        chunk_frame(stream_id, first_seq + offset, part, text)
        for offset, (part, text) in enumerate(batches)
    ]


def snapshot_frame(
    stream_id: str, *, text: str, reasoning: str, last_seq: int, status: str
) -> Frame:
    return {
        "type": "snapshot",
        "stream_id": stream_id,
        "text": text,
        "reasoning": reasoning,
        "last_seq": last_seq,
        "status": status,
    }


def status_frame(stream: Stream) -> Frame:
    """A stream's status; a final one carries what a client verifies its text against
    and what the LLM server reported (all null before the end)."""
    final = stream.is_final
    return {
        "type": "status",
        "stream_id": str(stream.id),
        "status": stream.status,
        "error": stream.error or None,
        "last_seq": stream.last_seq if final else None,
        "length": stream.length if final else None,
        "sha256": stream.sha256 if final else None,
        "reasoning_length": stream.reasoning_length if final else None,
        "reasoning_sha256": stream.reasoning_sha256 if final else None,
        "finish_reason": (stream.finish_reason or None) if final else None,
        "model": (stream.model or None) if final else None,
        "usage": stream.usage if final else None,
    }


def active_status_frame(stream_id: str, status: str) -> Frame:
    """The status frame of a stream that is not final (its other fields are null)."""
    return {
        "type": "status",
        "stream_id": stream_id,
        "status": status,
        "error": None,
        **dict.fromkeys(_FINAL_FIELDS),
    }


_FINAL_FIELDS = (
    *("last_seq", "length", "sha256", "reasoning_length", "reasoning_sha256"),
    *("finish_reason", "model", "usage"),
)


def is_final_status(frame: Frame) -> bool:
    """A status frame that ends its stream (only final ones carry ``last_seq``)."""
    return frame["type"] == "status" and frame.get("last_seq") is not None


def group_event(frames: list[Frame]) -> dict[str, Any]:
    """The frames of one write, wrapped for ``group_send``: one channel-layer message per
    write, so a fast model costs Redis no more messages than a slow one."""
    return {"type": FRAMES_EVENT, "frames": frames}


async def aannounce(group: str, frames: list[Frame]) -> None:
    """Send frames to a group. Delivery is at most once by design (seq + resume repair
    what is lost), so a failure is logged with its traceback, never raised into the
    writer: a layer that is away is a warning, anything else an error."""
    await aannounce_many([(group, frames)])


async def aannounce_many(announcements: Sequence[tuple[str, list[Frame]]]) -> None:
    """``aannounce`` for several groups at once (a writer round's): in one call to a
    layer that has ``group_send_many`` (the component's Redis layer: two round trips
    for all), else a ``group_send`` each, side by side."""
    layer = get_channel_layer()
    announcements = [(group, frames) for group, frames in announcements if frames]
    if layer is None or not announcements:
        return
    send_many = getattr(layer, "group_send_many", None)
    if send_many is not None:
        events = [(group, group_event(frames)) for group, frames in announcements]
        await _announced(send_many(events), announcements)
    else:
        await asyncio.gather(
            *(
                _announced(layer.group_send(group, group_event(frames)), [(group, frames)])
                for group, frames in announcements
            )
        )


async def _announced(send: Awaitable[None], announcements: list[tuple[str, list[Frame]]]) -> None:
    """Await a layer's send of ``announcements``; count it, or log and count the loss."""
    try:
        await send
    except LAYER_ERRORS:
        logger.warning("could not announce %s", _described(announcements), exc_info=True)
    except Exception:
        logger.exception("announcing %s failed", _described(announcements))
    else:
        LAYER_MESSAGES.inc(len(announcements))
        return
    FRAMES_DROPPED.labels("announce_failed").inc(sum(len(f) for _, f in announcements))


def _described(announcements: list[tuple[str, list[Frame]]]) -> str:
    (group, frames), more = announcements[0], len(announcements) - 1
    return f"{frames[0]['type']} to {group}" + (f" and {more} more group(s)" if more else "")
