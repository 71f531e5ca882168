"""django-q task functions: thin wrappers, so the scheduled jobs, the management
commands and the admin run the same housekeeping code.

The scheduled runs log what they did (and nothing when there was nothing to do); the
commands print it instead, so a purge run by hand says its result once.
"""

from __future__ import annotations

import logging

from streaming import housekeeping

logger = logging.getLogger(__name__)


def reap_streams() -> int:
    """Scheduled reaper: settle expired leases as timeout; returns how many."""
    settled = housekeeping.streams_reap()
    if settled:
        logger.info("reaper settled %d expired streams as timeout", settled)
    return settled


def purge_streams() -> dict[str, int]:
    """Scheduled purge with the configured retentions; returns what it removed (kept as
    the task's result in django-q's admin)."""
    result = housekeeping.streams_purge()
    if result.streams or result.chunks:
        logger.info("purge: %s", result)
    return {"streams": result.streams, "chunks": result.chunks}
