"""What a caller asks the component to create."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NewStream:
    """One stream to create (``create_streams``): the channel-layer group of its frames,
    and its owner (a user, counted against ``STREAMING_MAX_ACTIVE_PER_OWNER``)."""

    group: str
    owner: Any = None
