"""The websocket frames the component sends, and their announcement to a group.

Announcements go out after the commit of the row they describe (Zulip's rule), so a
client that receives a frame can always read what it announces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

if TYPE_CHECKING:
    from streaming.models import Stream

logger = logging.getLogger(__name__)

Frame = dict[str, Any]


def chunk_frame(stream_id: str, seq: int, text: str) -> Frame:
    return {"type": "chunk", "stream_id": stream_id, "seq": seq, "text": text}


def chunk_frames(stream_id: str, first_seq: int, texts: Sequence[str]) -> list[Frame]:
    return [chunk_frame(stream_id, first_seq + offset, text) for offset, text in enumerate(texts)]


def snapshot_frame(stream_id: str, text: str, last_seq: int, status: str) -> Frame:
    return {
        "type": "snapshot",
        "stream_id": stream_id,
        "text": text,
        "last_seq": last_seq,
        "status": status,
    }


def status_frame(stream: Stream) -> Frame:
    final = stream.is_final
    return {
        "type": "status",
        "stream_id": str(stream.id),
        "status": stream.status,
        "error": stream.error or None,
        "last_seq": stream.last_seq if final else None,
        "length": stream.length if final else None,
        "sha256": stream.sha256 if final else None,
    }


def finish_frames(stream: Stream, first_seq: int, texts: Sequence[str]) -> list[Frame]:
    """What a finish announces: its last chunks, then the final status."""
    return [*chunk_frames(str(stream.id), first_seq, texts), status_frame(stream)]


#: The one group event type of the component; the consumer mixin's ``stream_frames``
#: handles it.
FRAMES_EVENT = "stream.frames"


def group_event(frames: list[Frame]) -> dict[str, Any]:
    """Wrap the frames of one write for ``group_send``: one channel-layer message per
    write, however many chunks it holds, so a fast model costs Redis no more messages
    than a slow one."""
    return {"type": FRAMES_EVENT, "frames": frames}


async def aannounce(group: str, frames: list[Frame]) -> None:
    """Send frames to a group. Delivery is at most once by design (seq + resume repair
    what is lost), so a failing layer is logged, never raised into the writer."""
    layer = get_channel_layer()
    if layer is None or not frames:
        return
    try:
        await layer.group_send(group, group_event(frames))
    except Exception:
        logger.warning("could not announce %s to %s", frames[0]["type"], group, exc_info=True)


def announce_on_commit(group: str, frames: list[Frame]) -> None:
    """Schedule ``aannounce`` for after the current transaction commits."""
    from django.db import transaction

    transaction.on_commit(lambda: async_to_sync(aannounce)(group, frames))
