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
    # The model's thinking, shown to people, never sent back to the LLM as context.
    reasoning = models.TextField(blank=True)
    # A user message's id chosen by its client: a prompt sent again with it is the same
    # prompt (unique in its conversation).
    client_id = models.CharField(max_length=64, blank=True)
    # An answer's question.
    prompt = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="answer"
    )
    # An answer given again (the AI SDK's regenerate): the answer that replaced this one.
    # A replaced answer stays in the transcript, marked, and is never LLM context.
    replaced_by = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces"
    )
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
    finish_reason = models.CharField(max_length=16, blank=True)
    model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)
    #: Seconds from the claim to the final status.
    duration = models.FloatField(null=True, blank=True)
    # An answer's text as sanitised HTML, rendered once when it ends: pages show it as
    # is while ``html_version`` is chat.markdown.MARKDOWN_VERSION (0: never rendered).
    html = models.TextField(blank=True, editable=False)
    html_version = models.PositiveSmallIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation_id", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=~models.Q(client_id=""),
                name="message_unique_client_id",
            )
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:40]}"

    @property
    def usage(self) -> dict[str, int | None] | None:
        counts = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }
        return counts if any(v is not None for v in counts.values()) else None
