"""Prometheus metrics of this process, and the view that exposes them.

Needs ``prometheus-client`` (the ``metrics`` extra); without it every metric is a no-op
and the view answers 404. Each server process has its own metrics: scrape each one.
The view serves staff users, or a request carrying ``Authorization: Bearer <token>``
with ``STREAMING_METRICS_TOKEN``; never anyone else.
"""

from __future__ import annotations

import hmac
from types import ModuleType
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from streaming.conf import app_settings

prometheus: ModuleType | None
try:
    import prometheus_client as prometheus
except ImportError:  # pragma: no cover - the metrics extra is not installed
    prometheus = None


class _NoMetric:
    """Stands in for a metric when prometheus-client is not installed."""

    def labels(self, *args: Any, **kwargs: Any) -> _NoMetric:
        return self

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...

    def observe(self, value: float) -> None: ...


def _metric(kind: str, name: str, documentation: str, **options: Any) -> Any:
    if prometheus is None:
        return _NoMetric()
    return getattr(prometheus, kind)(name, documentation, **options)


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

ACTIVE_STREAMS = _metric("Gauge", "streaming_active_streams", "Streams this process drives now.")
TOKENS = _metric(
    "Counter", "streaming_tokens_total", "Deltas the drivers were given.", labelnames=["part"]
)
TIME_TO_FIRST_TOKEN = _metric(
    "Histogram",
    "streaming_time_to_first_token_seconds",
    "From the start of a drive to its text source's first delta.",
    buckets=_LATENCY_BUCKETS,
)
WRITE_SECONDS = _metric(
    "Histogram",
    "streaming_write_seconds",
    "Duration of one writer round (one transaction for every due stream).",
    buckets=_LATENCY_BUCKETS,
)
CHUNKS_PER_WRITE = _metric(
    "Histogram",
    "streaming_chunks_per_write",
    "Chunks committed by one writer round.",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
WRITES = _metric("Counter", "streaming_writes_total", "Writer rounds (database transactions).")
LAYER_MESSAGES = _metric(
    "Counter", "streaming_layer_messages_total", "Group messages sent to the channel layer."
)
GAPS_REPAIRED = _metric(
    "Counter", "streaming_gaps_repaired_total", "Catch-ups from the database after a lost frame."
)
FRAMES_DROPPED = _metric(
    "Counter",
    "streaming_frames_dropped_total",
    "Frames that did not reach a reader: a reader too slow, an announcement that failed.",
    labelnames=["reason"],
)
STREAMS_REAPED = _metric(
    "Counter", "streaming_streams_reaped_total", "Streams settled as timeout (expired leases)."
)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition of this process's metrics."""
    if prometheus is None:
        return JsonResponse(
            {"error": {"code": "not_found", "detail": "prometheus-client is not installed."}},
            status=404,
        )
    if not _allowed(request):
        return JsonResponse(
            {"error": {"code": "forbidden", "detail": "Staff or the metrics token only."}},
            status=403,
        )
    return HttpResponse(prometheus.generate_latest(), content_type=prometheus.CONTENT_TYPE_LATEST)


def _allowed(request: HttpRequest) -> bool:
    token = app_settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)
