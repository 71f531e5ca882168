"""Conversations and their messages. An assistant message points at the stream that
generates it; once the stream is final the message holds the whole text itself."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent")]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    @property
    def group_name(self) -> str:
        """The channel-layer group of every socket on this conversation."""
        return f"chat.conversation.{self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "user"
        ASSISTANT = "assistant", "assistant"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    text = models.TextField(blank=True)
    stream = models.OneToOneField(
        "streaming.Stream",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="message",
    )
    # Copied from the stream when it ends, so history never needs the stream.
    status = models.CharField(max_length=16, default="done")
    last_seq = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    # An answer's text as sanitised HTML, rendered once when it ends: pages show it as
    # is while ``html_version`` is chat.markdown.MARKDOWN_VERSION (0: never rendered).
    html = models.TextField(blank=True, editable=False)
    html_version = models.PositiveSmallIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:40]}"
