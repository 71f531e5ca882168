"""Every knob of the streaming component, read from Django settings with a default.

Like django-allauth's ``app_settings``: one object, one property a setting, each with the
default and the reason for it. Properties read settings on each access, so tests can
override them with ``settings`` fixtures.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings


class StreamingSettings:
    def _get(self, name: str, default: Any) -> Any:
        return getattr(settings, f"STREAMING_{name}", default)

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
    def ADAPTER(self) -> str:
        """Dotted path of the StreamAdapter subclass that hooks a project into streams."""
        return str(self._get("ADAPTER", "streaming.adapter.StreamAdapter"))


app_settings = StreamingSettings()
