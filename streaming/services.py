"""Services: every write to streams and chunks (HackSoft style: services write).

Each status change is one conditional UPDATE that matches only the statuses the
lifecycle allows (``streaming.core.lifecycle``), so two processes racing for the same
change cannot both win, and a final status never changes again. Frames are announced
only after the commit of the rows they describe.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import batched
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.db import connections, router, transaction
from django.db.models import Count
from django.utils import timezone

from streaming.adapter import get_adapter
from streaming.conf import app_settings
from streaming.core.batching import Batch
from streaming.core.deltas import (
    REASONING,
    TEXT,
    USAGE_FIELDS,
    Finish,
    clean_model,
    clean_usage,
    final_finish_reason,
)
from streaming.core.lifecycle import ACTIVE, Status, sources_for, text_digest
from streaming.core.requests import NewStream
from streaming.errors import StreamError
from streaming.frames import Frame, aannounce, status_frame
from streaming.metrics import STREAMS_REAPED
from streaming.models import Chunk, Stream

StreamId = uuid.UUID | str

TIMEOUT_MESSAGE = (
    "The server generating this text stopped responding; what it wrote so far is kept."
)


def _lease_from(now: datetime) -> datetime:
    return now + timedelta(seconds=app_settings.LEASE_SECONDS)


def announce_on_commit(group: str, frames: list[Frame]) -> None:
    """Send ``frames`` to ``group`` once the current transaction commits (sync callers;
    the driver announces from its event loop instead)."""
    transaction.on_commit(lambda: async_to_sync(aannounce)(group, frames))


# --- creating and claiming -------------------------------------------------------------

#: Streams created ``claimed`` in this process and not yet driven: id → group. ``drive``
#: takes its stream from here instead of claiming it with a transaction of its own.
_claimed_here: dict[str, str] = {}


def keep_claim(stream_id: str, group: str) -> None:
    """Hold a claim this process won (``stream_claim``) for its ``drive`` here."""
    _claimed_here[stream_id] = group


def take_claim(stream_id: str) -> str | None:
    """The group of a stream created claimed in this process, once (None otherwise)."""
    return _claimed_here.pop(stream_id, None)


def take_all_claims() -> list[str]:
    """Every stream created claimed here and not driven yet (a server stopping)."""
    stream_ids = list(_claimed_here)
    _claimed_here.clear()
    return stream_ids


def stream_create(*, group: str, owner: Any = None, claimed: bool = False) -> Stream:
    """A new stream, ``pending``, or already ``streaming`` when ``claimed``: then the
    caller must ``drive`` it in this process, and the claim costs no transaction of its
    own (it commits with the caller's). Its lease starts now, so one that nobody drives
    is reaped. Refused with ``too_many_active`` past the owner's limit."""
    (created,) = streams_create([NewStream(group, owner)], claimed=claimed)
    if isinstance(created, StreamError):
        raise created
    return created


def streams_create(
    requests: Sequence[NewStream], *, claimed: bool = False
) -> list[Stream | StreamError]:
    """``stream_create`` for many streams at once (a burst of prompts), in one INSERT:
    each result is the new stream, or the ``too_many_active`` refusal of a request past
    its owner's limit, which wrote nothing. Requests of one owner are granted in order.

    Inside a caller's transaction it takes no savepoint (two statements fewer a
    prompt): refusals are returned, not raised, so the caller's transaction stays
    usable and the caller decides what a refusal undoes."""
    limit = app_settings.MAX_ACTIVE_PER_OWNER
    with transaction.atomic(savepoint=False):
        owners = {r.owner.pk for r in requests if r.owner is not None} if limit else set()
        room = {pk: limit - active for pk, active in _owners_active(owners).items()}
        results: list[Stream | StreamError] = []
        for request in requests:
            owner_pk = request.owner.pk if request.owner is not None else None
            if owner_pk in room and room[owner_pk] <= 0:
                results.append(
                    StreamError(
                        StreamError.TOO_MANY_ACTIVE,
                        f"At most {limit} answers may stream at once; wait for one to finish.",
                    )
                )
                continue
            if owner_pk in room:
                room[owner_pk] -= 1
            results.append(_stream_new(request, claimed))
        _streams_insert([r for r in results if isinstance(r, Stream)], claimed)
    return results


def _owners_active(owner_pks: set[Any]) -> dict[Any, int]:
    """Each owner's active streams, counted under a lock on the owners' rows (taken in
    key order, so two bursts cannot deadlock), so concurrent creates count each other
    (the count is a statement of its own: in READ COMMITTED it sees what the lock
    waited for)."""
    if not owner_pks:
        return {}
    users = get_user_model().objects.select_for_update().filter(pk__in=owner_pks)
    list(users.order_by("pk").values_list("pk"))
    active = (
        Stream.objects.filter(owner__in=owner_pks, status__in=[str(s) for s in ACTIVE])
        .values("owner")
        .annotate(count=Count("id"))
        .values_list("owner", "count")
    )
    return {pk: 0 for pk in owner_pks} | dict(active)


def _stream_new(request: NewStream, claimed: bool) -> Stream:
    now = timezone.now()
    return Stream(
        group=request.group,
        owner=request.owner,
        lease_expires_at=_lease_from(now),
        status=Status.STREAMING if claimed else Status.PENDING,
        started_at=now if claimed else None,
    )


def _streams_insert(streams: list[Stream], claimed: bool) -> None:
    if not streams:
        return
    Stream.objects.bulk_create(streams)
    if claimed:
        groups = {str(stream.id): stream.group for stream in streams}
        transaction.on_commit(lambda: _claimed_here.update(groups))


def stream_claim(*, stream_id: StreamId) -> Stream | None:
    """The pending → streaming compare-and-set: the stream for exactly one claimer, ever;
    None for every other (and for an unknown id). The caller announces the status."""
    now = timezone.now()
    with transaction.atomic():
        won = Stream.objects.filter(id=stream_id, status__in=sources_for(Status.STREAMING)).update(
            status=Status.STREAMING,
            lease_expires_at=_lease_from(now),
            started_at=now,
            updated_at=now,
        )
        return Stream.objects.get(id=stream_id) if won else None


# --- the driver's writes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkWrite:
    """The next batches of one stream, to be chunks ``first_seq``, ``first_seq + 1``, …"""

    stream_id: str
    first_seq: int
    batches: Sequence[Batch]
    first_token_at: datetime | None = None

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.batches) - 1


def chunks_append(*, writes: Sequence[ChunkWrite]) -> dict[str, bool]:
    """Persist the batches of several streams and renew their leases, in the caller's
    transaction; map each stream id to whether its chunks are in the database now.

    Each stream's row only matches while it is streaming and its last seq is the one
    before ``first_seq``, which keeps seqs gapless and stops a driver whose stream was
    settled (or deleted) by someone else. One UPDATE advances every stream under its
    own guard; only when some did not match is each looked at apart, and a retry of a
    write that did commit (the connection broke before the answer) is recognised and
    not written twice.
    """
    if not writes:
        return {}
    if _advance(writes) == len(writes):
        accepted, advanced = dict.fromkeys((w.stream_id for w in writes), True), writes
    else:
        accepted, advanced = _which_advanced(writes)
    _insert_chunks(advanced)
    return accepted


#: The most streams one portable UPDATE guards: SQLite parses the guard's chain of ORs
#: as a tree and refuses one deeper than 1,000 terms.
_GUARDS_PER_UPDATE = 500


def _rows_per_statement(
    connection: Any, rows: Sized, params_per_row: int, fixed_params: int = 0
) -> int:
    """How many of ``rows``, ``params_per_row`` placeholders each, one statement may hold
    beside ``fixed_params`` others under the backend's parameter limit (SQLite's is set
    when it is built, 999 in old builds): all of them where there is none, as Django's
    ``bulk_batch_size`` for an INSERT."""
    limit = connection.features.max_query_params
    return (limit - fixed_params) // params_per_row if limit else max(1, len(rows))


def _advance(writes: Sequence[ChunkWrite]) -> int:
    """Advance every write's stream under its guard (last seq, lease, first token) in
    one UPDATE, or on a backend that bounds a statement in as few as it allows: the
    number of streams advanced.

    Written as SQL (portable: a CASE and a guard of ORs, in statements of at most
    ``_GUARDS_PER_UPDATE`` streams): built by the ORM, each stream's When and Q were
    resolved apart, about 250 µs of CPU per stream, so a round of 300 streams cost 77 ms
    before reaching the database."""
    connection = connections[router.db_for_write(Stream)]
    quote = connection.ops.quote_name
    fields = {field.name: field for field in Stream._meta.concrete_fields}
    columns = {field.name: quote(field.column) for field in fields.values() if field.column}
    now = timezone.now()
    if connection.vendor == "postgresql":
        return _advance_postgresql(connection, columns, writes, now)
    # Six placeholders a stream (its CASE arms and its guard) beside three for all.
    size = min(_GUARDS_PER_UPDATE, _rows_per_statement(connection, writes, 6, 3))
    return sum(
        _advance_portable(connection, fields, columns, part, now) for part in batched(writes, size)
    )


def _advance_portable(
    connection: Any,
    fields: dict[str, Any],
    columns: dict[str, str],
    writes: Sequence[ChunkWrite],
    now: datetime,
) -> int:
    def prep(name: str, value: Any) -> Any:
        return fields[name].get_db_prep_value(value, connection)

    quote = connection.ops.quote_name
    ids = [prep("id", w.stream_id) for w in writes]
    pk, last_seq, first_token = columns["id"], columns["last_seq"], columns["first_token_at"]
    sets = [f"{last_seq} = CASE {pk}{' WHEN %s THEN %s' * len(writes)} END"]
    params: list[Any] = [p for i, w in zip(ids, writes, strict=True) for p in (i, w.last_seq)]
    sets += [f"{columns['lease_expires_at']} = %s", f"{columns['updated_at']} = %s"]
    params += [prep("lease_expires_at", _lease_from(now)), prep("updated_at", now)]
    if firsts := [(i, w) for i, w in zip(ids, writes, strict=True) if w.first_token_at is not None]:
        sets.append(
            f"{first_token} = CASE {pk}{' WHEN %s THEN %s' * len(firsts)} ELSE {first_token} END"
        )
        params += [p for i, w in firsts for p in (i, prep("first_token_at", w.first_token_at))]
    guard = " OR ".join([f"({pk} = %s AND {last_seq} = %s)"] * len(writes))
    params += [prep("status", str(Status.STREAMING))]
    params += [p for i, w in zip(ids, writes, strict=True) for p in (i, w.first_seq - 1)]
    sql = (
        f"UPDATE {quote(Stream._meta.db_table)} SET {', '.join(sets)}"
        f" WHERE {columns['status']} = %s AND ({guard})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _advance_postgresql(
    connection: Any, columns: dict[str, str], writes: Sequence[ChunkWrite], now: datetime
) -> int:
    """``_advance`` on PostgreSQL: the same guarded UPDATE with the streams' values in
    arrays, so its text is the same for any number of streams (psycopg parses it once,
    not a placeholder per value each round) and each value is adapted once. With the
    chunks' INSERT written so too, a round of 250 streams costs its thread 1.7 ms of
    CPU instead of 6.3 (8.6 through ``bulk_create``)."""
    c = columns
    sql = (
        f"UPDATE {connection.ops.quote_name(Stream._meta.db_table)} AS s"
        f" SET {c['last_seq']} = v.last_seq, {c['lease_expires_at']} = %s,"
        f" {c['updated_at']} = %s,"
        f" {c['first_token_at']} = COALESCE(v.first_token_at, s.{c['first_token_at']})"
        " FROM unnest(%s::uuid[], %s::integer[], %s::integer[], %s::timestamptz[])"
        " AS v(id, previous_seq, last_seq, first_token_at)"
        f" WHERE s.{c['id']} = v.id AND s.{c['status']} = %s"
        f" AND s.{c['last_seq']} = v.previous_seq"
    )
    params = [
        _lease_from(now),
        now,
        [str(w.stream_id) for w in writes],
        [w.first_seq - 1 for w in writes],
        [w.last_seq for w in writes],
        [w.first_token_at for w in writes],
        str(Status.STREAMING),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _which_advanced(
    writes: Sequence[ChunkWrite],
) -> tuple[dict[str, bool], list[ChunkWrite]]:
    """After an UPDATE that did not advance every stream: each stream's acceptance (it
    is streaming at the write's last seq), and the writes whose chunks are still to
    insert (an accepted write without its first chunk is one this UPDATE advanced; one
    with it is a retry of a write that had committed)."""
    connection = connections[router.db_for_read(Stream)]
    ids = [w.stream_id for w in writes]
    rows = {
        str(row["id"]): row
        for part in batched(ids, _rows_per_statement(connection, ids, 1))
        for row in Stream.objects.filter(id__in=part).values("id", "status", "last_seq")
    }
    accepted: dict[str, bool] = {}
    advanced: list[ChunkWrite] = []
    for write in writes:
        row = rows.get(str(uuid.UUID(str(write.stream_id))))
        accepted[write.stream_id] = ok = bool(
            row and row["status"] == Status.STREAMING and row["last_seq"] == write.last_seq
        )
        first = Chunk.objects.filter(stream_id=write.stream_id, seq=write.first_seq)
        if ok and not first.exists():
            advanced.append(write)
    return accepted, advanced


def _insert_chunks(writes: Sequence[ChunkWrite]) -> None:
    """One INSERT of every write's chunk rows.

    Written as SQL (portable: VALUES lists, as many rows a statement as the backend's
    parameter limit allows; arrays on PostgreSQL), as ``_advance``
    is: ``bulk_create`` built a model and prepared each of its fields apart, about 2 ms
    of CPU for a round of 250 streams, in a database thread that holds the GIL the
    token path waits on."""
    rows = [
        (str(write.stream_id), write.first_seq + offset, part, text)
        for write in writes
        for offset, (part, text) in enumerate(write.batches)
    ]
    if not rows:
        return
    connection = connections[router.db_for_write(Chunk)]
    quote = connection.ops.quote_name
    fields = {field.name: field for field in Chunk._meta.concrete_fields}
    column = {field.name: quote(field.column) for field in fields.values() if field.column}
    names = ("stream", "seq", "part", "text", "created_at")
    columns = ", ".join(column[name] for name in names)
    table = quote(Chunk._meta.db_table)
    if connection.vendor == "postgresql":  # as in _advance_postgresql: arrays
        sql = (
            f"INSERT INTO {table} ({columns}) SELECT v.*, %s"
            " FROM unnest(%s::uuid[], %s::integer[], %s::text[], %s::text[]) AS v"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [timezone.now(), *map(list, zip(*rows, strict=True))])
        return
    stream_ids = {
        stream_id: fields["stream"].get_db_prep_value(stream_id, connection)
        for stream_id, *_ in rows
    }
    created_at = fields["created_at"].get_db_prep_value(timezone.now(), connection)
    with connection.cursor() as cursor:
        for part in batched(rows, connection.ops.bulk_batch_size([fields[n] for n in names], rows)):
            params = [
                value
                for stream_id, seq, kind, text in part
                for value in (stream_ids[stream_id], seq, kind, text, created_at)
            ]
            placeholders = ", ".join(["(%s, %s, %s, %s, %s)"] * len(part))
            cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {placeholders}", params)


def streams_renew_leases(*, stream_ids: Sequence[str]) -> set[str]:
    """Keep quiet streams alive with one UPDATE (one a slice of ids where the backend
    bounds a statement's parameters); return the ids that are no longer streaming
    (settled or deleted by someone else), whose drivers must stop."""
    now = timezone.now()
    alive: set[str] = set()
    connection = connections[router.db_for_write(Stream)]
    for part in batched(stream_ids, _rows_per_statement(connection, stream_ids, 1, 3)):
        still_streaming = Stream.objects.filter(id__in=part, status=Status.STREAMING)
        still_streaming.update(lease_expires_at=_lease_from(now), updated_at=now)
        alive.update(str(stream_id) for stream_id in still_streaming.values_list("id", flat=True))
    return set(stream_ids) - alive


def stream_end(
    *,
    stream_id: StreamId,
    status: Status,
    written: Mapping[str, str],
    error: str = "",
    first_seq: int = 0,
    tail: Sequence[Batch] = (),
    report: Finish | None = None,
    first_token_at: datetime | None = None,
) -> Stream | None:
    """The driver's end: its last batches (chunks ``first_seq``, …, guarded like
    ``chunks_append``) and the final status, in the caller's transaction; None when the
    stream was no longer the driver's to end. The caller announces the frames.

    ``written`` is the text of chunks ``0`` to ``first_seq - 1`` per part, as the driver
    wrote them. The compacted text is that plus the tail, set by the finalizing UPDATE
    itself (guarded by the last seq), so no chunk is read back. Only when the last seq
    is not the driver's and there is no tail (a write it gave up on did commit) are the
    chunks compacted instead.
    """
    changes: dict[str, Any] = {}
    if tail:
        changes["last_seq"] = first_seq + len(tail) - 1
    if first_token_at is not None:
        changes["first_token_at"] = first_token_at
    report = report or Finish()
    usage = clean_usage(report.usage) or {}
    changes.update(
        model=clean_model(report.model),
        finish_reason=final_finish_reason(status, report.finish_reason),
        **{name: usage.get(name) for name in USAGE_FIELDS},
    )
    whole = {part: written.get(part, "") for part in (TEXT, REASONING)}
    for part, text in tail:
        whole[part] += text
    compacted = {**changes, **_compacted(whole[TEXT], whole[REASONING])}
    at_drivers_seq = {"status": Status.STREAMING, "last_seq": first_seq - 1}
    if _finalize(stream_id, at_drivers_seq, status=status, error=error, changes=compacted):
        _insert_chunks([ChunkWrite(str(stream_id), first_seq, tail)])
        return _finished(stream_id)
    streaming = {"status": Status.STREAMING}
    if tail or not _finalize(stream_id, streaming, status=status, error=error, changes=changes):
        return None
    return _compact(stream_id)


# --- ends decided by others: the reaper, a cancel nobody answered, a delete -------------


@transaction.atomic
def stream_settle_if_expired(*, stream_id: StreamId) -> Stream | None:
    """Lazy reaping: a pending or streaming stream whose lease passed becomes timeout.
    The lease is checked again by the UPDATE, so a driver that renewed it keeps it."""
    guard = {"status__in": sources_for(Status.TIMEOUT), "lease_expires_at__lt": timezone.now()}
    stream = _settle(stream_id, guard, Status.TIMEOUT, TIMEOUT_MESSAGE)
    if stream is not None:
        STREAMS_REAPED.inc()
    return stream


@transaction.atomic
def stream_cancel_now(*, stream_id: StreamId) -> Stream | None:
    """Cancel a pending stream, or a streaming one whose driver did not answer a cancel:
    the text persisted so far stays. None if it was final already."""
    return _settle(stream_id, {"status__in": sources_for(Status.CANCELLED)}, Status.CANCELLED, "")


@transaction.atomic
def stream_settle_stopped(*, stream_id: StreamId, error: str) -> Stream | None:
    """End a stream this process claimed but never drove, as its server stops."""
    return _settle(stream_id, {"status__in": sources_for(Status.ERROR)}, Status.ERROR, error)


def _settle(
    stream_id: StreamId, guard: dict[str, Any], status: Status, error: str
) -> Stream | None:
    changes = {"finish_reason": final_finish_reason(status, None)}
    if not _finalize(stream_id, guard, status=status, error=error, changes=changes):
        return None
    stream = _compact(stream_id)
    announce_on_commit(stream.group, [status_frame(stream)])
    return stream


def _finalize(
    stream_id: StreamId,
    guard: dict[str, Any],
    *,
    status: Status,
    error: str,
    changes: dict[str, Any],
) -> bool:
    """The one UPDATE that makes a stream final, where ``guard`` still holds. It comes
    first in its transaction, so it locks the row: no chunk can be appended between
    reading the chunks and writing the compacted text."""
    if not Status(status).is_final:
        raise ValueError(f"{status!r} is not a final status")
    now = timezone.now()
    return bool(
        Stream.objects.filter(id=stream_id, **guard).update(
            status=status, error=error, finished_at=now, updated_at=now, **changes
        )
    )


def _compact(stream_id: StreamId) -> Stream:
    """Copy the whole text and reasoning into the final row from its chunks (reading it
    is then one row, and the chunks may go); then the project's hook."""
    parts: dict[str, list[str]] = {TEXT: [], REASONING: []}
    for part, text in (
        Chunk.objects.filter(stream_id=stream_id).order_by("seq").values_list("part", "text")
    ):
        parts[part].append(text)
    compacted = _compacted("".join(parts[TEXT]), "".join(parts[REASONING]))
    Stream.objects.filter(id=stream_id).update(**compacted)
    return _finished(stream_id)


def _compacted(text: str, reasoning: str) -> dict[str, Any]:
    """The final row's text and reasoning, with the digests a client verifies."""
    length, sha256 = text_digest(text)
    reasoning_length, reasoning_sha256 = text_digest(reasoning)
    return {
        "text": text,
        "length": length,
        "sha256": sha256,
        "reasoning": reasoning,
        "reasoning_length": reasoning_length,
        "reasoning_sha256": reasoning_sha256,
    }


def _finished(stream_id: StreamId) -> Stream:
    """The final row, after the project's hook ran on it in the same transaction."""
    stream = Stream.objects.get(id=stream_id)
    get_adapter().stream_finished(stream)
    return stream


@transaction.atomic
def stream_delete(*, stream_id: StreamId) -> bool:
    """Remove a stream and its chunks (an active one: see ``api.delete_stream``)."""
    Chunk.objects.filter(stream_id=stream_id).delete()
    deleted, _ = Stream.objects.filter(id=stream_id).delete()
    return bool(deleted)
