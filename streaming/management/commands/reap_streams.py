"""``manage.py reap_streams``: the scheduled reaper, run once by hand."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from streaming.housekeeping import streams_reap


class Command(BaseCommand):
    help = (
        "Settle pending or streaming streams whose lease expired as timeout "
        "(their text so far is kept)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        settled = streams_reap()
        if options["verbosity"] >= 1:
            noun = "stream" if settled == 1 else "streams"
            self.stdout.write(f"Settled {settled} expired {noun} as timeout.")
