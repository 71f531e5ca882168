"""What the page shows about an answer besides its text: whether its "Thinking" block
is live, and the quiet line of a finished answer. ``answerMeta`` and ``formatDuration``
in static/chat/transcript.js are the same rules, for answers that end in the browser."""

from __future__ import annotations

import math
from typing import Any

from django import template
from django.utils import timezone

register = template.Library()

ACTIVE = ("pending", "streaming")


def format_duration(seconds: float) -> str:
    """Tenths under 10 s, whole seconds under a minute, then minutes and seconds;
    halves round up (as the page's ``Math.floor(x + 0.5)``, not Python's ``round``)."""
    tenths = math.floor(seconds * 10 + 0.5)
    if tenths < 100:
        return f"{tenths / 10:.1f} s"
    whole = math.floor(seconds + 0.5)
    if whole < 60:
        return f"{whole} s"
    return f"{whole // 60} min {whole % 60} s"


def answer_line(
    model: str | None, usage: dict[str, int | None] | None, duration: float | None
) -> str:
    """Model, tokens (completion, and reasoning if any) and time; what is unknown is
    left out, and nothing known is ""."""
    parts = [model] if model else []
    completion = (usage or {}).get("completion_tokens")
    if completion is not None:
        reasoning = (usage or {}).get("reasoning_tokens")
        tokens = f"{completion} {'token' if completion == 1 else 'tokens'}"
        parts.append(f"{tokens} ({reasoning} reasoning)" if reasoning else tokens)
    if duration is not None:
        parts.append(format_duration(duration))
    return " · ".join(parts)


@register.filter(name="answer_meta")
def answer_meta(message: dict[str, Any]) -> str:
    """``{{ message|answer_meta }}``: a final answer's quiet line ("" while it streams)."""
    if message.get("status") in ACTIVE:
        return ""
    return answer_line(message.get("model"), message.get("usage"), message.get("duration"))


@register.filter(name="is_thinking")
def is_thinking(message: dict[str, Any]) -> bool:
    """An answer whose model is still thinking: reasoning so far, no text yet."""
    return (
        message.get("status") in ACTIVE
        and bool(message.get("reasoning"))
        and not message.get("text")
    )


@register.filter(name="elapsed")
def elapsed(message: dict[str, Any]) -> str:
    """``{{ message|elapsed }}``: seconds since an answer began (its stream is claimed as
    its row is created), so the page can time one it continues after a reload."""
    created = message.get("created_at")
    if created is None:
        return ""
    return f"{max(0.0, (timezone.now() - created).total_seconds()):.3f}"
