"""``manage.py purge_streams``: the scheduled purge, run by hand."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streaming.conf import app_settings
from streaming.housekeeping import describe_duration, parse_duration, streams_purge

OLDER_THAN = "--older-than"
_NEGATIVE = re.compile(r"-\d")


def duration(value: str) -> timedelta:
    """argparse ``type=``: a bad value becomes a usage error (exit code 2), before any
    row is read."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def joined_negative_value(argv: list[str]) -> list[str]:
    """``--older-than -1d`` as ``--older-than=-1d``: argparse takes a separate "-1d" for
    an option and answers "expected one argument"; joined, the value reaches
    ``duration`` and the user reads why it is refused."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] == OLDER_THAN and _NEGATIVE.match(arg):
            joined[-1] = f"{OLDER_THAN}={arg}"
        else:
            joined.append(arg)
    return joined


class Command(BaseCommand):
    help = (
        "Delete the chunks of final streams older than STREAMING_CHUNK_RETENTION, then "
        "the final streams older than STREAMING_STREAM_RETENTION. Active streams, messages "
        "and conversations are never touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be removed; remove nothing."
        )
        parser.add_argument(
            OLDER_THAN,
            type=duration,
            metavar="DURATION",
            help="Use this age (90s, 15m, 12h, 7d) instead of both retentions for this run.",
        )

    def run_from_argv(self, argv: list[str]) -> None:
        super().run_from_argv(joined_negative_value(argv))

    def handle(self, *args: Any, **options: Any) -> None:
        older_than = options["older_than"]
        if isinstance(older_than, str):  # call_command(older_than="7d") skips argparse
            try:
                older_than = parse_duration(older_than)
            except ValueError as exc:
                raise CommandError(str(exc), returncode=2) from None
        if options["verbosity"] >= 2:
            self.stdout.write(self._policy(older_than))
        result = streams_purge(older_than=older_than, dry_run=options["dry_run"])
        if options["verbosity"] >= 1:
            self.stdout.write(str(result))

    def _policy(self, older_than: timedelta | None) -> str:
        if older_than is not None:
            return f"Final streams and their chunks older than {describe_duration(older_than)}."
        chunks = describe_duration(timedelta(seconds=app_settings.CHUNK_RETENTION))
        streams = describe_duration(timedelta(seconds=app_settings.STREAM_RETENTION))
        return (
            f"Chunks of final streams older than {chunks}; final streams older than "
            f"{streams}; at most {app_settings.PURGE_BATCH_SIZE} rows per statement."
        )
