"""django-q task functions: thin wrappers, so the scheduled jobs, the management
commands and the admin run the same housekeeping code."""

from __future__ import annotations

from streaming import housekeeping


def reap_streams() -> int:
    """Scheduled reaper: settle expired leases as timeout; returns how many."""
    return housekeeping.streams_reap()


def purge_streams() -> dict[str, int]:
    """Scheduled purge with the configured retentions; returns what it removed (kept as
    the task's result in django-q's admin)."""
    result = housekeeping.streams_purge()
    return {"streams": result.streams, "chunks": result.chunks}
