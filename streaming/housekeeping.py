"""Housekeeping services: the reaper and the purge.

The scheduled tasks, the management commands and the admin actions all call these, so
there is one implementation of each job. They write, so they are services; they only
ever remove chunks and stream rows, never anything of the project that uses streams.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.db import connections, router, transaction
from django.db.models import QuerySet
from django.utils import timezone

from streaming import services
from streaming.conf import app_settings
from streaming.core.lifecycle import ACTIVE, FINAL
from streaming.models import Chunk, Stream

logger = logging.getLogger(__name__)

FINAL_STATUSES = tuple(sorted(str(s) for s in FINAL))
ACTIVE_STATUSES = tuple(sorted(str(s) for s in ACTIVE))

_DURATION = re.compile(r"(\d+)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
_LONGEST = 100 * 366 * 86400


def parse_duration(value: str) -> timedelta:
    """``90s``, ``15m``, ``12h`` or ``7d`` as a timedelta; ValueError with a message a
    person can act on for anything else (a negative, a fraction, another unit, nothing)."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        why = "an age cannot be negative; " if value.strip().startswith("-") else ""
        raise ValueError(
            f"{value!r} is not a duration: {why}use a whole number and one of the units "
            "s, m, h, d (for example 90s, 15m, 12h or 7d)."
        )
    number, unit = match.groups()
    seconds = int(number) * _SECONDS[unit]
    if seconds >= _LONGEST:
        raise ValueError(f"{value!r} is longer than a century.")
    return timedelta(seconds=seconds)


def describe_duration(value: timedelta) -> str:
    """A duration as people say it: ``30 days``, ``1 hour``, ``90 seconds`` (the largest
    unit that states it exactly, so nothing is rounded away)."""
    seconds = round(value.total_seconds())
    for name, size in _UNITS:
        if seconds >= size and seconds % size == 0:
            return _plural(seconds // size, name)
    return _plural(seconds, "second")  # 0 seconds


# --- the reaper ---------------------------------------------------------------------


def _expired() -> QuerySet[Stream]:
    return Stream.objects.filter(status__in=ACTIVE_STATUSES, lease_expires_at__lt=timezone.now())


def expired_stream_count() -> int:
    """How many streams the reaper would settle now (``reap_streams --dry-run``)."""
    return _expired().count()


def streams_reap() -> int:
    """Settle every pending or streaming stream whose lease expired as ``timeout``, and
    return how many were settled. Chunks are kept.

    Each stream goes through ``stream_settle_if_expired``, which ends it as every final
    status is ended (``services._finalize``, then ``_compact``): the adapter copies the
    text into the project's rows and the status frame goes out after the commit. The UPDATE
    re-checks the lease, so a driver that renewed it in the meantime keeps its stream.
    The caller reports the count (the command prints it, the scheduled task logs it).
    """
    expired = list(_expired().order_by().values_list("id", flat=True))
    settled = 0
    for stream_id in expired:
        try:
            if services.stream_settle_if_expired(stream_id=stream_id) is not None:
                settled += 1
        except Exception:
            # One stream whose hook fails must not keep the others alive forever.
            logger.exception("could not settle expired stream %s", stream_id)
    return settled


# --- the purge ----------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeResult:
    """What a purge removed (or, for a dry run, would remove)."""

    streams: int
    chunks: int
    dry_run: bool = False

    def __add__(self, other: PurgeResult) -> PurgeResult:
        return PurgeResult(self.streams + other.streams, self.chunks + other.chunks, self.dry_run)

    def __str__(self) -> str:
        verb = "Would remove" if self.dry_run else "Removed"
        return f"{verb} {_plural(self.streams, 'stream')} and {_plural(self.chunks, 'chunk')}."


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def streams_purge(*, older_than: timedelta | None = None, dry_run: bool = False) -> PurgeResult:
    """Delete the chunks of final streams finished longer ago than CHUNK_RETENTION, then
    the final stream rows finished longer ago than STREAM_RETENTION. ``older_than``
    replaces both retentions for this run. Active streams are never touched.

    The row keeps the compacted text, so a resume after the chunks are gone answers with
    a snapshot; the project's rows keep their own copy of the text when the stream row
    goes (the chat's ``Message.stream`` is SET_NULL). The caller reports the result.
    """
    now = timezone.now()
    chunk_age = timedelta(seconds=app_settings.CHUNK_RETENTION)
    stream_age = timedelta(seconds=app_settings.STREAM_RETENTION)
    if older_than is not None:
        chunk_age = stream_age = older_than
    # A row is deleted only after its chunks, so chunks go at the shorter of the two ages.
    chunks = Chunk.objects.filter(
        stream__status__in=FINAL_STATUSES,
        stream__finished_at__lt=now - min(chunk_age, stream_age),
    )
    streams = Stream.objects.filter(status__in=FINAL_STATUSES, finished_at__lt=now - stream_age)
    if dry_run:
        return PurgeResult(streams=streams.count(), chunks=chunks.count(), dry_run=True)
    return _in_batches(chunks, _delete_chunks) + _in_batches(streams, _delete_streams)


def streams_purge_final(*, streams: QuerySet[Stream]) -> PurgeResult:
    """Delete the final streams among ``streams`` now, whatever their age: chunks first,
    then rows, in the same batches as the scheduled purge. Active ones are left alone."""
    final = streams.filter(status__in=FINAL_STATUSES).order_by().values("pk")
    return _in_batches(Chunk.objects.filter(stream_id__in=final), _delete_chunks) + _in_batches(
        Stream.objects.filter(pk__in=final), _delete_streams
    )


Deleter = Callable[[str, list], PurgeResult]


def _in_batches(rows: QuerySet, delete: Deleter) -> PurgeResult:
    """Delete ``rows`` a batch at a time, so no statement removes more than
    PURGE_BATCH_SIZE rows and no lock is held for long.

    Each batch is picked and deleted in one short transaction. Where the database can
    (PostgreSQL), the pick skips rows another purge has locked, so two purges running at
    once share the work instead of queueing; elsewhere they simply serialize. Either way
    the counts are what each DELETE actually removed, so nothing is counted twice.
    """
    size = max(1, app_settings.PURGE_BATCH_SIZE)
    using = router.db_for_write(rows.model)
    pick = rows.using(using).order_by().values_list("pk", flat=True)
    features = connections[using].features
    if features.has_select_for_update_skip_locked:
        of = ("self",) if features.has_select_for_update_of else ()
        pick = pick.select_for_update(skip_locked=True, of=of)
    total = PurgeResult(0, 0)
    while True:
        with transaction.atomic(using=using):
            pks = list(pick[:size])
            if pks:
                total += delete(using, pks)
        if len(pks) < size:
            return total


def _delete_chunks(using: str, pks: list) -> PurgeResult:
    # Chunks have nothing that depends on them: one plain DELETE, no collector.
    return PurgeResult(0, Chunk.objects.using(using).filter(pk__in=pks)._raw_delete(using))


def _delete_streams(using: str, pks: list) -> PurgeResult:
    # Django's collector, because other apps' rows may point at streams (SET_NULL and
    # the like). Loading only the pk keeps the compacted texts out of memory; the chunks
    # are already gone, and the collector removes any left with one fast DELETE without
    # loading them.
    _, per_model = Stream.objects.using(using).filter(pk__in=pks).only("pk").delete()
    return PurgeResult(per_model.get(Stream._meta.label, 0), per_model.get(Chunk._meta.label, 0))
