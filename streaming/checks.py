"""System checks: a misspelt or malformed ``STREAMING_*`` setting is reported by
``manage.py check`` (and at every start), not silently ignored."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from streaming.conf import StreamingSettings, app_settings


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    known = set(StreamingSettings.names())
    problems: list[Any] = []
    for name in dir(settings):
        if not name.startswith("STREAMING_"):
            continue
        short = name.removeprefix("STREAMING_")
        if short not in known:
            problems.append(
                Warning(
                    f"{name} is not a setting of the streaming component.",
                    hint="docs/component.md lists them all.",
                    id="streaming.W001",
                )
            )
            continue
        try:
            getattr(app_settings, short)
        except ImproperlyConfigured as exc:
            problems.append(Error(str(exc), id="streaming.E001"))
    return problems
