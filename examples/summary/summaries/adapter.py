"""How the example hooks into the component (``STREAMING_ADAPTER``)."""

from __future__ import annotations

from typing import Any

import streaming
from summaries.models import Summary


class SummaryAdapter(streaming.StreamAdapter):
    def stream_finished(self, stream: Any) -> None:
        """Inside the transaction that makes the stream final: keep the summary."""
        Summary.objects.filter(stream_id=stream.id).update(
            summary=stream.text, status=stream.status
        )
