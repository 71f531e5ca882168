"""The stream lifecycle's rules, in one place.

``pending → streaming → done | error | cancelled | timeout``. A pending stream may also
end directly (cancelled before anyone drove it, or reaped as timeout). The final four
never change again. The persistence layer turns each rule into one conditional UPDATE,
so the rule holds across processes without locks.
"""

from __future__ import annotations

import enum
import hashlib


class Status(enum.StrEnum):
    PENDING = "pending"
    STREAMING = "streaming"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"

    @property
    def is_final(self) -> bool:
        return self in FINAL


FINAL: frozenset[Status] = frozenset({Status.DONE, Status.ERROR, Status.CANCELLED, Status.TIMEOUT})
ACTIVE: frozenset[Status] = frozenset({Status.PENDING, Status.STREAMING})

#: For each target status, the statuses a stream may move to it from.
ALLOWED_SOURCES: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(),
    Status.STREAMING: frozenset({Status.PENDING}),
    Status.DONE: frozenset({Status.STREAMING}),
    Status.ERROR: frozenset({Status.PENDING, Status.STREAMING}),
    Status.CANCELLED: frozenset({Status.PENDING, Status.STREAMING}),
    Status.TIMEOUT: frozenset({Status.PENDING, Status.STREAMING}),
}


def can_transition(current: Status | str, target: Status | str) -> bool:
    """Whether a stream in ``current`` may move to ``target``."""
    return Status(current) in ALLOWED_SOURCES[Status(target)]


def sources_for(target: Status | str) -> tuple[str, ...]:
    """The statuses an UPDATE to ``target`` may match, as plain strings for a query."""
    return tuple(sorted(str(status) for status in ALLOWED_SOURCES[Status(target)]))


def text_digest(text: str) -> tuple[int, str]:
    """Length in characters and hex SHA-256 of the UTF-8 bytes: what a client verifies."""
    return len(text), hashlib.sha256(text.encode("utf-8")).hexdigest()
