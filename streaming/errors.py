"""The component's one application error, with stable codes that tests and clients use."""

from __future__ import annotations


class StreamError(Exception):
    """A stream operation that cannot proceed. ``code`` is stable; ``detail`` is for people."""

    NOT_FOUND = "unknown_stream"
    ALREADY_CLAIMED = "already_claimed"
    NOT_STREAMING = "not_streaming"
    TOO_MANY_ACTIVE = "too_many_active"
    UNAVAILABLE = "unavailable"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
