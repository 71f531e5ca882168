"""The public calls, named as the contract names them.

Each imports the layer it calls on first use, so ``import streaming`` works while
Django loads its apps (before any model may be imported).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from streaming.core.body import StreamBody
from streaming.core.deltas import Delta, Finish
from streaming.core.requests import NewStream
from streaming.errors import StreamError

if TYPE_CHECKING:
    from streaming.models import Stream

StreamId = uuid.UUID | str


def create_stream(*, group: str, owner: Any = None, claimed: bool = False) -> Stream:
    """A new ``pending`` stream whose frames go to the channel-layer ``group``.

    ``claimed=True`` creates it already claimed by this process, in the caller's
    transaction (so a prompt's rows and the claim commit together); the caller must then
    ``drive`` it in this process, or it times out after a lease.
    """
    from streaming.services import stream_create

    return stream_create(group=group, owner=owner, claimed=claimed)


def create_streams(
    requests: Sequence[NewStream], *, claimed: bool = False
) -> list[Stream | StreamError]:
    """``create_stream`` for many at once, in one INSERT (a burst of prompts, written
    together): each result is the new stream, or the ``StreamError`` refusing a request
    past its owner's limit, which wrote nothing. Refusals are returned, not raised, so
    the caller's transaction stays usable for the others."""
    from streaming.services import streams_create

    return streams_create(requests, claimed=claimed)


async def drive(
    stream_id: StreamId,
    deltas: AsyncIterator[str | Delta | Finish],
    *,
    on_token: Callable[[Delta], Awaitable[None]] | None = None,
) -> StreamBody:
    """Claim the stream (at most one driver, ever), consume ``deltas``, call ``on_token``
    with each, persist sentence batches, broadcast ``chunk`` and ``status`` frames, keep
    the lease, and end in a final status; returns the final body."""
    from streaming.driver import drive as drive_stream

    return await drive_stream(stream_id, deltas, on_token=on_token)


def get_stream_body(stream_id: StreamId, after: int | None = None) -> StreamBody:
    """The stream's persisted text and reasoning after ``after`` (all without it); an
    expired lease is settled as ``timeout`` first. StreamError(unknown_stream) if none."""
    from streaming.selectors import body_of, stream_get
    from streaming.services import stream_settle_if_expired

    if stream_get(stream_id=stream_id).lease_expired:
        stream_settle_if_expired(stream_id=stream_id)
    return body_of(stream_id, after=after)


async def aget_stream_body(stream_id: StreamId, after: int | None = None) -> StreamBody:
    """``get_stream_body`` for async callers, off the event loop."""
    from streaming.asyncdb import run_in_db

    return await run_in_db(get_stream_body, stream_id, after)


async def cancel_stream(stream_id: StreamId) -> bool:
    """Stop the stream's driver wherever it runs; it ends ``cancelled`` (at once when no
    driver answers). False for a stream already final."""
    from streaming.driver import cancel_stream as cancel

    return await cancel(stream_id)


def delete_stream(stream_id: StreamId) -> bool:
    """Remove a stream and its chunks. A running one is first cancelled, as a cancel
    ends it (the project's hook keeps its text), and its driver is told to stop."""
    from asgiref.sync import async_to_sync
    from django.db import transaction

    from streaming.hub import send_cancel
    from streaming.services import stream_cancel_now, stream_delete

    with transaction.atomic():
        cancelled = stream_cancel_now(stream_id=stream_id)
        deleted = stream_delete(stream_id=stream_id)
    if cancelled is not None:
        async_to_sync(send_cancel)(str(stream_id))
    return deleted
