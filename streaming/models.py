"""A stream is one generation of text; chunks are its persisted batches.

The status column is only ever written by the conditional UPDATEs in ``services``: the
lifecycle lives there, not in ``save()``.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from streaming.core.deltas import REASONING, TEXT, USAGE_FIELDS, Usage
from streaming.core.lifecycle import FINAL, Status


class Stream(models.Model):
    class StatusChoices(models.TextChoices):
        PENDING = Status.PENDING, "pending"
        STREAMING = Status.STREAMING, "streaming"
        DONE = Status.DONE, "done"
        ERROR = Status.ERROR, "error"
        CANCELLED = Status.CANCELLED, "cancelled"
        TIMEOUT = Status.TIMEOUT, "timeout"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    status = models.CharField(max_length=16, choices=StatusChoices.choices, default=Status.PENDING)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="streams",
    )
    group = models.CharField(
        max_length=100, help_text="Channel-layer group that receives this stream's frames."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    lease_expires_at = models.DateTimeField(
        help_text="A pending or streaming stream whose lease passed is settled as timeout."
    )
    started_at = models.DateTimeField(null=True, blank=True, help_text="When a driver claimed it.")
    first_token_at = models.DateTimeField(
        null=True, blank=True, help_text="When its text source produced the first delta."
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    last_seq = models.IntegerField(default=-1, help_text="Highest chunk seq persisted.")
    error = models.TextField(blank=True)
    # Compaction: filled once, with the final status.
    text = models.TextField(blank=True)
    length = models.PositiveIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    reasoning = models.TextField(blank=True)
    reasoning_length = models.PositiveIntegerField(null=True, blank=True)
    reasoning_sha256 = models.CharField(max_length=64, blank=True)
    # What the LLM server reported, recorded with the final status.
    finish_reason = models.CharField(max_length=16, blank=True)
    model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "lease_expires_at"], name="stream_status_lease"),
            models.Index(fields=["status", "finished_at"], name="stream_status_finished"),
            models.Index(fields=["owner", "status"], name="stream_owner_status"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_final(self) -> bool:
        return Status(self.status) in FINAL

    @property
    def lease_expired(self) -> bool:
        """Active, and its driver showed no sign of life for a whole lease."""
        return not self.is_final and self.lease_expires_at < timezone.now()

    @property
    def usage(self) -> Usage | None:
        """The token counts the server reported, or None when it reported none."""
        counts: dict[str, Any] = {name: getattr(self, name) for name in USAGE_FIELDS}
        return counts if any(v is not None for v in counts.values()) else None


class Chunk(models.Model):
    class Part(models.TextChoices):
        TEXT = TEXT, "text"
        REASONING = REASONING, "reasoning"

    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="chunks")
    seq = models.PositiveIntegerField()
    part = models.CharField(max_length=9, choices=Part.choices, default=TEXT)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["stream_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["stream", "seq"], name="chunk_unique_stream_seq")
        ]

    def __str__(self) -> str:
        return f"{self.stream_id}#{self.seq}"
