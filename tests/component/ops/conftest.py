"""Fixtures for the operations tests: streams in any state, made through the services as
a driver makes them, then aged by moving their timestamps back (no service makes a
stream that finished a month ago)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from streaming import services
from streaming.core.deltas import REASONING, TEXT
from streaming.core.lifecycle import Status
from streaming.models import Chunk, Stream
from tests.fixtures import parts_of

MakeStream = Callable[..., Stream]

#: The error a stream ended in each status records (as its driver would).
ERRORS = {Status.ERROR: "The text source failed (RuntimeError).", Status.TIMEOUT: "Idle."}


@pytest.fixture
def stream_in(owner: Any, settings: Any) -> MakeStream:
    """``stream_in(status, chunks=[...], reasoning=[...], finished_ago=..., lease_in=...,
    created_ago=...)``.

    Every stream but a pending one is claimed and has ``chunks`` of the text part (two
    unless told; a pending one has none), after its ``reasoning`` chunks, if any (as a
    model thinks, then answers). A final one ended through ``stream_end``
    (compacted: its row holds the text) ``finished_ago`` ago. Its lease ends
    ``lease_in`` from now (negative: expired).
    """
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 0  # as many active streams as a test needs

    def make(
        status: Status = Status.STREAMING,
        *,
        chunks: Sequence[str] | None = None,
        reasoning: Sequence[str] = (),
        finished_ago: timedelta = timedelta(0),
        lease_in: timedelta = timedelta(minutes=5),
        created_ago: timedelta = timedelta(0),
        group: str = "ops.test",
    ) -> Stream:
        status = Status(status)
        if chunks is None:
            chunks = () if status == Status.PENDING else ("Hello. ", "World.")
        if status == Status.PENDING and (chunks or reasoning):
            raise ValueError("a pending stream cannot have chunks")
        stream = services.stream_create(group=group, owner=owner)
        if status != Status.PENDING:
            services.stream_claim(stream_id=stream.id)
        batches = [(REASONING, text) for text in reasoning] + [(TEXT, text) for text in chunks]
        with transaction.atomic():
            if batches:
                write = services.ChunkWrite(str(stream.id), 0, batches)
                assert services.chunks_append(writes=[write]) == {str(stream.id): True}
            if status.is_final:
                assert services.stream_end(
                    stream_id=stream.id,
                    status=status,
                    written=parts_of(batches),
                    error=ERRORS.get(status, ""),
                    first_seq=len(batches),
                )
        now = timezone.now()
        aged: dict[str, Any] = {"lease_expires_at": now + lease_in}
        if status.is_final:
            aged["finished_at"] = now - finished_ago
        if created_ago:
            aged["created_at"] = now - created_ago
        Stream.objects.filter(pk=stream.pk).update(**aged)
        return Stream.objects.get(pk=stream.pk)

    return make


def chunk_count(stream: Stream) -> int:
    return Chunk.objects.filter(stream_id=stream.id).count()


def status_of(stream: Stream) -> str:
    return Stream.objects.get(pk=stream.pk).status
