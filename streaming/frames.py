"""The websocket frames the component sends, and their announcement to a group.

Announcements go out after the commit of the row they describe (Zulip's rule), so a
client that receives a frame can always read what it announces.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

if TYPE_CHECKING:
    from streaming.models import Stream

logger = logging.getLogger(__name__)

Frame = dict[str, Any]


def chunk_frame(stream_id: str, seq: int, text: str) -> Frame:
    return {"type": "chunk", "stream_id": stream_id, "seq": seq, "text": text}


def chunk_frames(stream_id: str, first_seq: int, texts: list[str] | tuple[str, ...]) -> list[Frame]:
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


def group_event(frame: Frame) -> dict[str, Any]:
    """Wrap a frame for ``group_send``; the consumer mixin's ``stream_<type>`` handles it."""
    return {"type": f"stream.{frame['type']}", "frame": frame}


async def aannounce(group: str, frames: list[Frame]) -> None:
    """Send frames to a group. Delivery is at most once by design (seq + resume repair
    what is lost), so a failing layer is logged, never raised into the writer."""
    layer = get_channel_layer()
    if layer is None:
        return
    for frame in frames:
        try:
            await layer.group_send(group, group_event(frame))
        except Exception:
            logger.warning("could not announce %s to %s", frame["type"], group, exc_info=True)
            return


def announce_on_commit(group: str, frames: list[Frame]) -> None:
    """Schedule ``aannounce`` for after the current transaction commits."""
    from django.db import transaction

    transaction.on_commit(lambda: async_to_sync(aannounce)(group, frames))
