"""Every knob of the streaming component, read from Django settings with a default.

Like django-allauth's ``app_settings``: one object, one property a setting, each with the
default and the reason for it; this is the only place a default is written. Properties
read settings on each access, so tests can override them with ``settings`` fixtures. A
setting given as a string (as a project passes environment variables on) is parsed to
the default's type, so ``STREAMING_LEASE_SECONDS="20"`` and ``"false"`` mean 20.0 and
False.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_setting(name: str, value: str, kind: type) -> Any:
    """A setting's string value as ``kind`` (bool, int, float), or ImproperlyConfigured
    naming the setting."""
    text = value.strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError(value)
        return kind(text)
    except ValueError:
        raise ImproperlyConfigured(
            f"STREAMING_{name}={value!r} is not a valid {kind.__name__}."
        ) from None


class StreamingSettings:
    def _get(self, name: str, default: Any) -> Any:
        value = getattr(settings, f"STREAMING_{name}", default)
        if isinstance(value, str) and not isinstance(default, str):
            return parse_setting(name, value, type(default))
        return value

    @classmethod
    def names(cls) -> list[str]:
        """Every setting's name, without the ``STREAMING_`` prefix."""
        return sorted(n for n, v in vars(cls).items() if isinstance(v, property))

    @property
    def FLUSH_MAX_CHARS(self) -> int:
        """A batch is cut at this many characters when no sentence ends (code, lists)."""
        return int(self._get("FLUSH_MAX_CHARS", 2048))

    @property
    def FLUSH_MAX_DELAY(self) -> float:
        """Seconds a batch's first character may wait before it is written anyway."""
        return float(self._get("FLUSH_MAX_DELAY", 1.0))

    @property
    def FLUSH_MIN_INTERVAL(self) -> float:
        """Seconds between the starts of two writes of one stream while text flows: the
        sentences of a model faster than that share one write and one channel-layer
        message, so a stream's database and Redis load is bounded whatever the model's
        speed. At a usual model's pace (a sentence every few hundred ms) it never waits."""
        return float(self._get("FLUSH_MIN_INTERVAL", 0.1))

    @property
    def LEASE_SECONDS(self) -> float:
        """A driver that shows no sign of life for this long is presumed dead."""
        return float(self._get("LEASE_SECONDS", 15.0))

    @property
    def MAX_ACTIVE_PER_OWNER(self) -> int:
        """Pending or streaming streams one owner may have at once (0 = no limit)."""
        return int(self._get("MAX_ACTIVE_PER_OWNER", 3))

    @property
    def RESUME_SNAPSHOT_AFTER(self) -> int:
        """A resume more than this many chunks behind gets one snapshot frame instead."""
        return int(self._get("RESUME_SNAPSHOT_AFTER", 64))

    @property
    def SNAPSHOT_MAX_CHARS(self) -> int:
        """Longest snapshot frame; past it a resume gets the chunks (daphne refuses
        websocket messages over 1 MiB, and a character is up to 4 UTF-8 bytes)."""
        return int(self._get("SNAPSHOT_MAX_CHARS", 200_000))

    @property
    def CHUNK_RETENTION(self) -> float:
        """Seconds a final stream keeps its chunks; its row holds the whole text anyway."""
        return float(self._get("CHUNK_RETENTION", 3600.0))

    @property
    def STREAM_RETENTION(self) -> float:
        """Seconds a final stream's row is kept before the purge deletes it."""
        return float(self._get("STREAM_RETENTION", 30 * 86400.0))

    @property
    def PURGE_BATCH_SIZE(self) -> int:
        """No purge statement deletes more rows than this, so no lock is held long."""
        return int(self._get("PURGE_BATCH_SIZE", 5000))

    @property
    def REAPER_MINUTES(self) -> int:
        """How often the scheduled reaper looks for expired leases."""
        return int(self._get("REAPER_MINUTES", 1))

    @property
    def PURGE_MINUTES(self) -> int:
        """How often the scheduled purge runs."""
        return int(self._get("PURGE_MINUTES", 60))

    @property
    def CANCEL_ON_DRIVER_DISCONNECT(self) -> bool:
        """Cancel a generation when its driving socket leaves (default: let it finish)."""
        return bool(self._get("CANCEL_ON_DRIVER_DISCONNECT", False))

    @property
    def DB_RETRY_SECONDS(self) -> float:
        """How long the driver retries a failed chunk write before ending in error."""
        return float(self._get("DB_RETRY_SECONDS", 10.0))

    @property
    def DELTA_IDLE_TIMEOUT(self) -> float:
        """Seconds a text source may send nothing before its stream ends ``timeout`` and
        the source is closed (0 = no limit). The lease proves the process lives; this
        proves the model does. Reasoning models stream their thinking, so a long think
        is not silence; the default is above any sane wait for a first token."""
        return float(self._get("DELTA_IDLE_TIMEOUT", 120.0))

    @property
    def CANCEL_ACK_SECONDS(self) -> float:
        """How long a cancel waits for the stream's driver to acknowledge before it
        cancels the stream itself (the driver's process died)."""
        return float(self._get("CANCEL_ACK_SECONDS", 1.0))

    @property
    def FRAME_RATE(self) -> float:
        """Client frames per second one user may send, sustained, over all sockets."""
        return float(self._get("FRAME_RATE", 20.0))

    @property
    def FRAME_BURST(self) -> int:
        """Client frames one user may send at once (0 = no limit); past it the socket is
        closed with 4008. Counted in ``RATE_LIMIT_CACHE`` so that reconnecting, or
        opening sockets on several processes, does not reset it."""
        return int(self._get("FRAME_BURST", 60))

    @property
    def RATE_LIMIT_CACHE(self) -> str:
        """The Django cache alias that counts client frames; a shared one (Redis) for
        several processes."""
        return str(self._get("RATE_LIMIT_CACHE", "default"))

    @property
    def SSE_KEEPALIVE_SECONDS(self) -> float:
        """Silence after which an event stream sends a comment line, so that proxies
        (whose read timeout must be longer) keep the connection."""
        return float(self._get("SSE_KEEPALIVE_SECONDS", 15.0))

    @property
    def SSE_MAX_SECONDS(self) -> float:
        """Longest an event stream stays open; the client reconnects with Last-Event-ID
        and misses nothing. Bounded so that no proxy or load balancer holds it for ever,
        and a server's connections turn over."""
        return float(self._get("SSE_MAX_SECONDS", 300.0))

    @property
    def METRICS_TOKEN(self) -> str:
        """A bearer token that may read ``metrics_view`` besides staff users ("" = staff
        only): what a Prometheus scraper sends as ``Authorization: Bearer <token>``."""
        return str(self._get("METRICS_TOKEN", ""))

    @property
    def ADAPTER(self) -> str:
        """Dotted path of the StreamAdapter subclass that hooks a project into streams."""
        return str(self._get("ADAPTER", "streaming.adapter.StreamAdapter"))


app_settings = StreamingSettings()
