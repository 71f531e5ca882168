"""The template filter for answers' Markdown (the rendering lives in ``chat.markdown``)."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from chatproject.chat.markdown import render_markdown

register = template.Library()


@register.filter(name="message_html")
def message_html(message: dict[str, Any]) -> SafeString:
    """``{{ message|message_html }}``: the HTML stored when the answer ended, else the
    text rendered now (an answer still streaming, or HTML of an older renderer)."""
    html = message.get("html")
    # Sanitised by nh3, whether stored or rendered now.
    return mark_safe(html if html is not None else render_markdown(message["text"]))
