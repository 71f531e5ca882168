"""Services: every write to streams and chunks (HackSoft style: services write).

Each status change is one conditional UPDATE that matches only the statuses the
lifecycle allows (``streaming.core.lifecycle``), so two processes racing for the same
change cannot both win, and a final status never changes again. Frames are announced
only after the commit of the rows they describe.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from streaming.adapter import get_adapter
from streaming.conf import app_settings
from streaming.core.lifecycle import ACTIVE, Status, sources_for, text_digest
from streaming.errors import StreamError
from streaming.frames import announce_on_commit, chunk_frames, finish_frames, status_frame
from streaming.models import Chunk, Stream

TIMEOUT_MESSAGE = "The stream's driver stopped responding (its lease expired)."


def _lease_from(now: datetime) -> datetime:
    return now + timedelta(seconds=app_settings.LEASE_SECONDS)


@transaction.atomic
def stream_create(*, group: str, owner: Any = None) -> Stream:
    """A new pending stream. Its lease starts now, so one that nobody claims is reaped."""
    limit = app_settings.MAX_ACTIVE_PER_OWNER
    if owner is not None and limit:
        # Lock the owner's row so two concurrent creates count each other.
        get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
        active = Stream.objects.filter(owner=owner, status__in=[str(s) for s in ACTIVE]).count()
        if active >= limit:
            raise StreamError(
                StreamError.TOO_MANY_ACTIVE,
                f"At most {limit} answers may stream at once; wait for one to finish.",
            )
    return Stream.objects.create(
        group=group, owner=owner, lease_expires_at=_lease_from(timezone.now())
    )


def stream_claim(
    *, stream_id: uuid.UUID | str, driver_channel: str, announce: bool = True
) -> Stream | None:
    """The pending → streaming compare-and-set: the stream for exactly one claimer, ever;
    None for every other (and for an unknown id). ``announce=False``: the async caller
    sends the status frame itself once this returns."""
    now = timezone.now()
    with transaction.atomic():
        won = Stream.objects.filter(id=stream_id, status__in=sources_for(Status.STREAMING)).update(
            status=Status.STREAMING,
            driver_channel=driver_channel,
            lease_expires_at=_lease_from(now),
            updated_at=now,
        )
        if not won:
            return None
        stream = Stream.objects.get(id=stream_id)
        if announce:
            announce_on_commit(stream.group, [status_frame(stream)])
    return stream


def chunk_append(
    *,
    stream_id: uuid.UUID | str,
    group: str,
    first_seq: int,
    texts: Sequence[str],
    announce: bool = True,
) -> int:
    """Persist ``texts`` as chunks ``first_seq, first_seq + 1, …`` and renew the lease, in
    one transaction; announce them after commit. Returns the new last seq.

    The UPDATE only matches a streaming stream whose last seq is ``first_seq - 1``, which
    keeps seqs gapless and stops a driver whose stream was settled by someone else. A
    retry of a write that did commit (the connection broke before the answer) is
    recognised and succeeds without writing twice. An async caller passes
    ``announce=False`` and announces once this returns (after the commit too), which
    spares the worker thread a hop back to the event loop.
    """
    last_seq = first_seq + len(texts) - 1
    now = timezone.now()
    with transaction.atomic():
        updated = Stream.objects.filter(
            id=stream_id, status=Status.STREAMING, last_seq=first_seq - 1
        ).update(last_seq=last_seq, lease_expires_at=_lease_from(now), updated_at=now)
        if not updated:
            stream = Stream.objects.only("status", "last_seq").get(id=stream_id)
            if stream.last_seq == last_seq and stream.status == Status.STREAMING:
                return last_seq
            raise StreamError(
                StreamError.NOT_STREAMING,
                f"Stream {stream_id} is {stream.status} at seq {stream.last_seq}.",
            )
        Chunk.objects.bulk_create(
            Chunk(stream_id=stream_id, seq=first_seq + offset, text=text)
            for offset, text in enumerate(texts)
        )
        if announce:
            announce_on_commit(group, chunk_frames(str(stream_id), first_seq, texts))
    return last_seq


def stream_renew_lease(*, stream_id: uuid.UUID | str) -> bool:
    """Keep a quiet stream alive: one UPDATE, only while it is streaming."""
    now = timezone.now()
    return bool(
        Stream.objects.filter(id=stream_id, status=Status.STREAMING).update(
            lease_expires_at=_lease_from(now), updated_at=now
        )
    )


@transaction.atomic
def stream_finish(
    *,
    stream_id: uuid.UUID | str,
    status: Status,
    error: str = "",
    only_if_expired: bool = False,
    only_from: Sequence[Status] | None = None,
    first_seq: int = 0,
    texts: Sequence[str] = (),
    announce: bool = True,
) -> Stream | None:
    """Move a stream to a final status and compact it; None if it could not move.

    A driver passes its last ``texts`` (chunks ``first_seq``, …), guarded like
    ``chunk_append``: its end is one transaction and one announcement, chunks then
    status. The status UPDATE comes first, so it locks the row: no chunk can be appended
    between reading the chunks and writing the compacted text. The adapter's hook runs
    in the same transaction, and the frames go out after the commit (``announce=False``:
    the async caller sends ``finish_frames`` itself once this returns).
    """
    assert Status(status).is_final, status
    now = timezone.now()
    sources = [str(s) for s in (only_from or sources_for(status))]
    matching = Stream.objects.filter(id=stream_id, status__in=sources)
    if only_if_expired:
        matching = matching.filter(lease_expires_at__lt=now)
    changes: dict[str, Any] = {"status": status, "error": error, "finished_at": now}
    if texts:
        matching = matching.filter(last_seq=first_seq - 1)
        changes["last_seq"] = first_seq + len(texts) - 1
    if not matching.update(**changes, updated_at=now):
        return None
    Chunk.objects.bulk_create(
        Chunk(stream_id=stream_id, seq=first_seq + offset, text=text)
        for offset, text in enumerate(texts)
    )
    text = "".join(
        Chunk.objects.filter(stream_id=stream_id).order_by("seq").values_list("text", flat=True)
    )
    length, sha256 = text_digest(text)
    Stream.objects.filter(id=stream_id).update(
        text=text, length=length, sha256=sha256, driver_channel=""
    )
    stream = Stream.objects.get(id=stream_id)
    get_adapter().stream_finished(stream)
    if announce:
        announce_on_commit(stream.group, finish_frames(stream, first_seq, texts))
    return stream


def stream_settle_if_expired(*, stream_id: uuid.UUID | str) -> Stream | None:
    """Lazy reaping: a reader who finds an expired lease settles the stream as timeout."""
    return stream_finish(
        stream_id=stream_id, status=Status.TIMEOUT, error=TIMEOUT_MESSAGE, only_if_expired=True
    )


def stream_delete(*, stream_id: uuid.UUID | str) -> bool:
    """Remove a stream and its chunks."""
    with transaction.atomic():
        Chunk.objects.filter(stream_id=stream_id).delete()
        deleted, _ = Stream.objects.filter(id=stream_id).delete()
    return bool(deleted)
