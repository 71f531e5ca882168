"""A pasted text and its summary. The summary streams through a ``streaming.Stream``;
once the stream is final the adapter copies the text here, so the page never needs the
stream again (the component purges old streams: SET_NULL keeps the summary)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse


class Summary(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    text = models.TextField(help_text="What the user pasted.")
    stream = models.OneToOneField(
        "streaming.Stream", null=True, blank=True, on_delete=models.SET_NULL
    )
    summary = models.TextField(blank=True, help_text="The final summary (the adapter's copy).")
    status = models.CharField(max_length=16, blank=True, help_text="The stream's final status.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "summaries"

    def __str__(self) -> str:
        return self.text[:60]

    def get_absolute_url(self) -> str:
        return reverse("summary", args=[self.pk])

    @property
    def group(self) -> str:
        """The channel-layer group of this summary's sockets (and of its stream)."""
        return f"summary.{self.pk}"
