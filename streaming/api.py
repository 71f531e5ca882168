"""The public write calls, named as the contract names them."""

from __future__ import annotations

import uuid
from typing import Any

from streaming import services
from streaming.models import Stream


def create_stream(*, group: str, owner: Any = None) -> Stream:
    """A new ``pending`` stream whose frames go to the channel-layer ``group``."""
    return services.stream_create(group=group, owner=owner)


def delete_stream(stream_id: uuid.UUID | str) -> bool:
    """Remove a stream and its chunks."""
    return services.stream_delete(stream_id=stream_id)
