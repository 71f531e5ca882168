"""Selectors: every read of streams and chunks (HackSoft style: selectors read, and
only read: settling an expired lease is a service the callers run first)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from streaming.core.body import StreamBody
from streaming.core.deltas import REASONING, TEXT
from streaming.core.lifecycle import ACTIVE
from streaming.errors import StreamError
from streaming.models import Chunk, Stream

StreamId = uuid.UUID | str


@dataclass(frozen=True, slots=True)
class ChunkRow:
    seq: int
    part: str
    text: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stream's whole text and reasoning up to a seq."""

    text: str
    reasoning: str

    def __len__(self) -> int:
        return len(self.text) + len(self.reasoning)


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What a reader at ``after`` needs: the chunks after it, or one snapshot (then
    ``chunks`` is empty), and the seq it holds afterwards. ``stream`` is the row as
    read before the chunks: its status may be older than they are."""

    stream: Stream
    chunks: list[ChunkRow]
    snapshot: Snapshot | None
    last_seq: int


def stream_get(*, stream_id: StreamId) -> Stream:
    """The stream, or StreamError(unknown_stream) for an unknown or malformed id."""
    try:
        stream = Stream.objects.filter(id=stream_id).first()
    except (ValidationError, ValueError):
        stream = None
    if stream is None:
        raise StreamError(StreamError.NOT_FOUND, "No such stream.")
    return stream


def chunks_after(*, stream_id: StreamId, after: int) -> list[ChunkRow]:
    """The chunks with ``seq > after``, in order."""
    return [
        ChunkRow(seq, part, text)
        for seq, part, text in Chunk.objects.filter(stream_id=stream_id, seq__gt=after)
        .order_by("seq")
        .values_list("seq", "part", "text")
    ]


def join_parts(chunks: Iterable[ChunkRow]) -> Snapshot:
    parts: dict[str, list[str]] = {TEXT: [], REASONING: []}
    for chunk in chunks:
        parts[chunk.part].append(chunk.text)
    return Snapshot("".join(parts[TEXT]), "".join(parts[REASONING]))


def catch_up(
    *,
    stream_id: StreamId,
    after: int,
    snapshot_after: int | None = None,
    snapshot_max_chars: int | None = None,
    snapshots: bool = True,
) -> CatchUp:
    """The chunks of a stream with ``seq > after``, or a snapshot of all of it.

    Reads the row, then the chunks: a reader that joined the stream's group before this
    call misses nothing committed later. A final stream read from the start is one row
    (its compacted text). A snapshot also answers when the chunks after ``after`` are
    gone (purged), or, with ``snapshot_after``, when more than that many are behind. A
    snapshot longer than ``snapshot_max_chars`` would not fit in one websocket message:
    the chunks answer instead while they are kept.

    ``snapshots=False`` is for a reader that counts chunks (the AI SDK's WebSocket
    sequences): the chunks answer whenever they are all kept, and a snapshot only when
    they were purged.
    """
    stream = stream_get(stream_id=stream_id)
    after = max(after, -1)
    if not snapshots:
        snapshot_after = None

    def fits(snapshot: Snapshot) -> bool:
        return snapshot_max_chars is None or len(snapshot) <= snapshot_max_chars

    if stream.is_final:
        behind = stream.last_seq - after
        whole = Snapshot(stream.text, stream.reasoning)
        if behind <= 0:
            return CatchUp(stream, [], None, stream.last_seq)
        wants_snapshot = snapshots and (
            after == -1 or (snapshot_after is not None and behind > snapshot_after)
        )
        if wants_snapshot and fits(whole):
            return CatchUp(stream, [], whole, stream.last_seq)
        chunks = chunks_after(stream_id=stream.id, after=after)
        if [c.seq for c in chunks] != list(range(after + 1, stream.last_seq + 1)):
            return CatchUp(stream, [], whole, stream.last_seq)  # purged: the row answers
        return CatchUp(stream, chunks, None, stream.last_seq)
    if snapshot_after is not None and stream.last_seq - after > snapshot_after:
        chunks = chunks_after(stream_id=stream.id, after=-1)
        whole = join_parts(chunks)
        if chunks and fits(whole):
            return CatchUp(stream, [], whole, chunks[-1].seq)
        chunks = [c for c in chunks if c.seq > after]
    else:
        chunks = chunks_after(stream_id=stream.id, after=after)
    # Chunks committed after the row was read may be included: the cursor follows them.
    return CatchUp(stream, chunks, None, chunks[-1].seq if chunks else after)


def body_of(stream_id: StreamId, *, after: int | None = None) -> StreamBody:
    """A stream's persisted text and reasoning after ``after`` (None or -1: all)."""
    after = -1 if after is None else after
    reply = catch_up(stream_id=stream_id, after=after)
    content = reply.snapshot or join_parts(reply.chunks)
    return _body(reply.stream, content, reply.last_seq, reply.snapshot is not None and after >= 0)


def final_body(stream: Stream) -> StreamBody:
    """The body of a final stream from its row alone (it holds the whole text)."""
    return _body(stream, Snapshot(stream.text, stream.reasoning), stream.last_seq, False)


def _body(stream: Stream, content: Snapshot, last_seq: int, snapshot: bool) -> StreamBody:
    final = stream.is_final
    return StreamBody(
        text=content.text,
        reasoning=content.reasoning,
        status=stream.status,
        last_seq=last_seq,
        error=stream.error or None,
        snapshot=snapshot,
        finish_reason=(stream.finish_reason or None) if final else None,
        model=(stream.model or None) if final else None,
        usage=stream.usage if final else None,
    )


def active_stream_bodies(stream_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, StreamBody]:
    """Bodies of the given streams that are still active, in two queries whatever the
    count: what a page needs to render streaming messages with their persisted text.

    The text and ``last_seq`` come from the same chunk rows (one statement sees one
    committed prefix of each stream's chunks), so a reader resuming after ``last_seq``
    never gets again a chunk it was given here.
    """
    streams = {
        s.id: s
        for s in Stream.objects.filter(
            id__in=list(stream_ids), status__in=[str(a) for a in ACTIVE]
        ).only("id", "status", "error")
    }
    rows: dict[uuid.UUID, list[ChunkRow]] = {sid: [] for sid in streams}
    for stream_id, seq, part, text in (
        Chunk.objects.filter(stream_id__in=list(streams))
        .order_by("stream_id", "seq")
        .values_list("stream_id", "seq", "part", "text")
    ):
        rows[stream_id].append(ChunkRow(seq, part, text))
    bodies = {}
    for sid, stream in streams.items():
        content = join_parts(rows[sid])
        last_seq = rows[sid][-1].seq if rows[sid] else -1
        bodies[sid] = StreamBody(
            content.text, content.reasoning, stream.status, last_seq, stream.error or None
        )
    return bodies
