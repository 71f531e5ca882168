"""The override point through which a project hooks into streams (django-allauth style).

A project subclasses :class:`StreamAdapter` and names it in ``STREAMING_ADAPTER``. Core
behaviour never depends on signals: the component calls these methods explicitly.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from django.utils.module_loading import import_string

from streaming.conf import app_settings

if TYPE_CHECKING:
    from streaming.models import Stream


class StreamAdapter:
    def stream_finished(self, stream: Stream) -> None:
        """Called inside the transaction that makes ``stream`` final, after its row holds
        the whole text: copy what you need (the chat app copies the text into its message).
        Raising rolls the final status back, so keep it to database writes."""

    def can_access(self, user: Any, stream: Stream) -> bool:
        """Whether ``user`` may read and cancel ``stream``. Others see it as unknown."""
        return bool(
            getattr(user, "is_authenticated", False)
            and stream.owner_id is not None
            and stream.owner_id == user.pk
        )

    def error_message(self, exc: BaseException) -> str:
        """The readable message stored on a stream whose text source raised ``exc``.
        It reaches users, so the default names the failure without internals."""
        return f"The text source failed ({type(exc).__name__})."


@cache
def _adapter_for(path: str) -> StreamAdapter:
    return import_string(path)()


def get_adapter() -> StreamAdapter:
    return _adapter_for(app_settings.ADAPTER)
