"""A reusable Django component that streams generated text into the database and out
to websockets: driven by one socket, persisted in sentence batches, fanned out through
the channel layer, resumable with no gap and no duplicate.

The public API (lazily imported, so ``import streaming`` works before apps load)::

    create_stream(group=..., owner=None) -> Stream
    await drive(stream_id, deltas, on_token=...) -> str
    drive_in_background(stream_id, deltas, on_token=...) -> asyncio.Task
    get_stream_body(stream_id, after=None) -> StreamBody   (async twin: aget_stream_body)
    await cancel_stream(stream_id) -> bool
    delete_stream(stream_id) -> bool
    StreamConsumerMixin, FrameError, FloodError, FLOOD_CLOSE_CODE, TRANSIENT_ERRORS,
    StreamAdapter, StreamBody, StreamError, Status
    active_stream_bodies(stream_ids), json_login_required (views), clean_text(text),
    await run_in_db(fn, *args) (sync ORM work off the loop, not thread-sensitive)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "create_stream": ("streaming.api", "create_stream"),
    "delete_stream": ("streaming.api", "delete_stream"),
    "drive": ("streaming.driver", "drive"),
    "drive_in_background": ("streaming.driver", "drive_in_background"),
    "cancel_stream": ("streaming.driver", "cancel_stream"),
    "get_stream_body": ("streaming.selectors", "get_stream_body"),
    "aget_stream_body": ("streaming.selectors", "aget_stream_body"),
    "active_stream_bodies": ("streaming.selectors", "active_stream_bodies"),
    "StreamBody": ("streaming.selectors", "StreamBody"),
    "StreamConsumerMixin": ("streaming.consumers", "StreamConsumerMixin"),
    "FrameError": ("streaming.consumers", "FrameError"),
    "FloodError": ("streaming.consumers", "FloodError"),
    "FLOOD_CLOSE_CODE": ("streaming.consumers", "FLOOD_CLOSE_CODE"),
    "TRANSIENT_ERRORS": ("streaming.outages", "TRANSIENT_ERRORS"),
    "json_login_required": ("streaming.views", "json_login_required"),
    "StreamAdapter": ("streaming.adapter", "StreamAdapter"),
    "StreamError": ("streaming.errors", "StreamError"),
    "Status": ("streaming.core.lifecycle", "Status"),
    "Delta": ("streaming.core.deltas", "Delta"),
    "Finish": ("streaming.core.deltas", "Finish"),
    "clean_text": ("streaming.core.text", "clean_text"),
    "run_in_db": ("streaming.asyncdb", "run_in_db"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'streaming' has no attribute {name!r}") from None
    return getattr(import_module(module), attribute)
