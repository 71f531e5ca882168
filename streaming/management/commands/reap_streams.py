"""``manage.py reap_streams``: the scheduled reaper, run once by hand."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from streaming.housekeeping import expired_stream_count, streams_reap


class Command(BaseCommand):
    help = (
        "Settle pending or streaming streams whose lease expired as timeout "
        "(their text so far is kept)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be settled; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["dry_run"]:
            count, verb = expired_stream_count(), "Would settle"
        else:
            count, verb = streams_reap(), "Settled"
        if options["verbosity"] >= 1:
            noun = "stream" if count == 1 else "streams"
            self.stdout.write(f"{verb} {count} expired {noun} as timeout.")
