"""Fixtures for the operations tests: streams in any state and age, built row by row
(the services would refuse to make a stream that already finished a month ago)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from chatproject.chat.models import Conversation, Message
from streaming.core.lifecycle import FINAL, Status, text_digest
from streaming.models import Chunk, Stream

MakeStream = Callable[..., Stream]


@pytest.fixture
def owner(db: Any) -> Any:
    return get_user_model().objects.create_user("ops-owner")  # no hashing: fast


@pytest.fixture
def make_stream(owner: Any) -> MakeStream:
    """``make_stream(status, chunks=[...], finished_ago=..., lease_in=...)``.

    A final stream is compacted (its row holds the text) and finished ``finished_ago``
    ago; an active one has a lease ending ``lease_in`` from now (negative: expired).
    """

    def make(
        status: Status = Status.STREAMING,
        *,
        chunks: Sequence[str] = ("Hello. ", "World."),
        finished_ago: timedelta = timedelta(0),
        lease_in: timedelta = timedelta(minutes=5),
        created_ago: timedelta = timedelta(0),
        group: str = "ops.test",
    ) -> Stream:
        now = timezone.now()
        final = Status(status) in FINAL
        text = "".join(chunks)
        length, sha256 = text_digest(text)
        stream = Stream.objects.create(
            status=status,
            owner=owner,
            group=group,
            lease_expires_at=now + lease_in,
            finished_at=now - finished_ago if final else None,
            last_seq=len(chunks) - 1,
            text=text if final else "",
            length=length if final else None,
            sha256=sha256 if final else "",
        )
        Chunk.objects.bulk_create(
            Chunk(stream=stream, seq=seq, text=piece) for seq, piece in enumerate(chunks)
        )
        if created_ago:
            Stream.objects.filter(pk=stream.pk).update(created_at=now - created_ago)
            stream.refresh_from_db()
        return stream

    return make


@pytest.fixture
def make_message(owner: Any) -> Callable[[Stream], Message]:
    """An assistant message in a new conversation, pointing at ``stream`` as the chat
    app leaves it (the text copied in if the stream is final)."""

    def make(stream: Stream) -> Message:
        conversation = Conversation.objects.create(owner=owner, title="ops")
        return Message.objects.create(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            stream=stream,
            status=stream.status,
            text=stream.text,
            last_seq=stream.last_seq if stream.is_final else -1,
        )

    return make


def chunk_count(stream: Stream) -> int:
    return Chunk.objects.filter(stream_id=stream.id).count()


def status_of(stream: Stream) -> str:
    return Stream.objects.get(pk=stream.pk).status
