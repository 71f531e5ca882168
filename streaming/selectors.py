"""Selectors: every read of streams and chunks (HackSoft style: selectors read)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.utils import timezone

from streaming.asyncdb import run_in_db
from streaming.core.lifecycle import FINAL, Status
from streaming.errors import StreamError
from streaming.models import Chunk, Stream
from streaming.services import stream_settle_if_expired


@dataclass(frozen=True)
class StreamBody:
    """A stream's text as persisted. With ``snapshot`` the text is the whole text up to
    ``last_seq`` and replaces what a reader had; otherwise it continues after ``after``."""

    text: str
    status: str
    last_seq: int
    error: str | None
    snapshot: bool = False

    @property
    def is_final(self) -> bool:
        return Status(self.status) in FINAL


def stream_get(*, stream_id: uuid.UUID | str, settle_expired: bool = True) -> Stream:
    """The stream, or StreamError(unknown_stream). An expired lease is settled on the spot."""
    try:
        stream = Stream.objects.filter(id=stream_id).first()
    except (ValidationError, ValueError):
        stream = None
    if stream is None:
        raise StreamError(StreamError.NOT_FOUND, "No such stream.")
    if settle_expired and not stream.is_final and stream.lease_expires_at < timezone.now():
        stream = stream_settle_if_expired(stream_id=stream.id) or Stream.objects.get(id=stream.id)
    return stream


def chunks_after(*, stream_id: uuid.UUID | str, after: int) -> list[tuple[int, str]]:
    """``(seq, text)`` of the chunks with ``seq > after``, in order."""
    return list(
        Chunk.objects.filter(stream_id=stream_id, seq__gt=after)
        .order_by("seq")
        .values_list("seq", "text")
    )


@dataclass(frozen=True)
class CatchUp:
    """What a reader at ``after`` needs: the chunks after it, or one snapshot."""

    chunks: list[tuple[int, str]]
    snapshot: bool
    snapshot_text: str
    last_seq: int
    status: str
    error: str | None


def catch_up(
    stream: Stream,
    *,
    after: int,
    snapshot_after: int | None = None,
    snapshot_max_chars: int | None = None,
) -> CatchUp:
    """The chunks of ``stream`` with ``seq > after``, or a snapshot of its whole text.

    A final stream read from the start is one row (its compacted text). A snapshot also
    answers when the chunks after ``after`` are gone (purged), or, with
    ``snapshot_after``, when more than that many are behind. A snapshot longer than
    ``snapshot_max_chars`` would not fit in one websocket message: the chunks answer
    instead while they are kept.
    """
    after = max(after, -1)
    error = stream.error or None

    def chunks_up_to(chunks: list[tuple[int, str]], last_seq: int) -> CatchUp:
        return CatchUp(chunks, False, "", last_seq, stream.status, error)

    def snapshot(text: str, last_seq: int) -> CatchUp:
        return CatchUp([], True, text, last_seq, stream.status, error)

    def fits(text_length: int) -> bool:
        return snapshot_max_chars is None or text_length <= snapshot_max_chars

    if stream.is_final:
        behind = stream.last_seq - after
        if behind <= 0:
            return chunks_up_to([], stream.last_seq)
        wants_snapshot = after == -1 or (snapshot_after is not None and behind > snapshot_after)
        if wants_snapshot and fits(len(stream.text)):
            return snapshot(stream.text, stream.last_seq)
        chunks = chunks_after(stream_id=stream.id, after=after)
        if [seq for seq, _ in chunks] != list(range(after + 1, stream.last_seq + 1)):
            return snapshot(stream.text, stream.last_seq)  # purged: the row answers
        return chunks_up_to(chunks, stream.last_seq)
    if snapshot_after is not None and stream.last_seq - after > snapshot_after:
        chunks = chunks_after(stream_id=stream.id, after=-1)
        text = "".join(text for _, text in chunks)
        if fits(len(text)):
            return snapshot(text, chunks[-1][0] if chunks else stream.last_seq)
        return chunks_up_to([c for c in chunks if c[0] > after], chunks[-1][0])
    chunks = chunks_after(stream_id=stream.id, after=after)
    # Chunks committed after the row was read may be included: the cursor follows them.
    return chunks_up_to(chunks, chunks[-1][0] if chunks else max(stream.last_seq, after))


def body_of(stream: Stream, *, after: int | None = None) -> StreamBody:
    """The text of ``stream`` after ``after`` (None or -1: all of it)."""
    after = -1 if after is None else after
    reply = catch_up(stream, after=after)
    if reply.snapshot:
        return StreamBody(
            reply.snapshot_text, reply.status, reply.last_seq, reply.error, after >= 0
        )
    text = "".join(text for _, text in reply.chunks)
    return StreamBody(text, reply.status, reply.last_seq, reply.error)


def get_stream_body(stream_id: uuid.UUID | str, after: int | None = None) -> StreamBody:
    """The public read: a stream's persisted text, settling an expired lease first."""
    return body_of(stream_get(stream_id=stream_id), after=after)


async def aget_stream_body(stream_id: uuid.UUID | str, after: int | None = None) -> StreamBody:
    """``get_stream_body`` for async callers, off the event loop."""
    return await run_in_db(get_stream_body, stream_id, after)


def active_stream_bodies(stream_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, StreamBody]:
    """Bodies of the given streams that are still active, in two queries whatever the
    count: what a page needs to render streaming messages with their persisted text."""
    streams = {
        s.id: s
        for s in Stream.objects.filter(id__in=list(stream_ids)).exclude(
            status__in=[str(f) for f in FINAL]
        )
    }
    texts: dict[uuid.UUID, list[str]] = {sid: [] for sid in streams}
    for stream_id, text in (
        Chunk.objects.filter(stream_id__in=list(streams))
        .order_by("stream_id", "seq")
        .values_list("stream_id", "text")
    ):
        texts[stream_id].append(text)
    return {
        sid: StreamBody("".join(texts[sid]), s.status, s.last_seq, s.error or None)
        for sid, s in streams.items()
    }
