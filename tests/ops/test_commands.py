"""``purge_streams`` and ``reap_streams``: the scheduled jobs, run by hand."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from streaming.core.lifecycle import Status
from streaming.housekeeping import parse_duration
from streaming.models import Chunk, Stream
from tests.servers import ROOT, server_env

MONTHS = timedelta(days=60)
BAD_DURATIONS = ["7x", "-1d", "", "1.5h", "7 days"]


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("0s", timedelta(0)),
    ],
)
def test_durations_parse(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [*BAD_DURATIONS, "99999999999999d"])
def test_a_malformed_duration_is_refused(text):
    with pytest.raises(ValueError, match=r"not a duration|longer than a century"):
        parse_duration(text)


@pytest.mark.django_db
def test_purge_streams_reports_what_it_removed(make_stream):
    make_stream(Status.DONE, chunks=("a", "b", "c"), finished_ago=MONTHS)
    make_stream(Status.DONE, finished_ago=MONTHS)
    assert run("purge_streams") == "Removed 2 streams and 5 chunks.\n"


@pytest.mark.django_db
def test_purge_streams_dry_run_reports_and_deletes_nothing(make_stream):
    make_stream(Status.DONE, finished_ago=MONTHS)
    assert run("purge_streams", "--dry-run") == "Would remove 1 stream and 2 chunks.\n"
    assert (Stream.objects.count(), Chunk.objects.count()) == (1, 2)


@pytest.mark.django_db
def test_older_than_purges_younger_streams_for_this_run(make_stream):
    make_stream(Status.DONE, finished_ago=timedelta(minutes=20))
    assert run("purge_streams", "--older-than", "15m") == "Removed 1 stream and 2 chunks.\n"


@pytest.mark.django_db
def test_verbosity_zero_prints_nothing(make_stream):
    make_stream(Status.DONE, finished_ago=MONTHS)
    assert run("purge_streams", "-v", "0") == ""
    assert not Stream.objects.exists()


@pytest.mark.django_db
def test_verbosity_two_states_the_policy_first(make_stream):
    lines = run("purge_streams", "-v", "2").splitlines()
    assert lines[0].startswith("Chunks of final streams older than 1:00:00")
    assert lines[1] == "Removed 0 streams and 0 chunks."


@pytest.mark.django_db
@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_a_malformed_older_than_is_an_error_and_deletes_nothing(make_stream, text):
    make_stream(Status.DONE, finished_ago=MONTHS)
    with pytest.raises(CommandError, match="older-than"):
        run("purge_streams", f"--older-than={text}")
    assert (Stream.objects.count(), Chunk.objects.count()) == (1, 2)


@pytest.mark.django_db
def test_a_malformed_older_than_given_as_a_keyword_is_an_error(make_stream):
    with pytest.raises(CommandError, match="not a duration"):
        call_command("purge_streams", older_than="7x")


@pytest.mark.parametrize("text", ["7x", "-1d", ""])
def test_a_malformed_older_than_exits_with_code_2(text):
    env = server_env(redis_url=None, llm_base_url=None)
    finished = subprocess.run(
        [sys.executable, "manage.py", "purge_streams", "--older-than", text],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2
    assert "--older-than" in finished.stderr


@pytest.mark.django_db
def test_reap_streams_reports_how_many_it_settled(make_stream):
    make_stream(Status.STREAMING, lease_in=timedelta(seconds=-1))
    make_stream(Status.PENDING, lease_in=timedelta(seconds=-1))
    make_stream(Status.STREAMING)
    assert run("reap_streams") == "Settled 2 expired streams as timeout.\n"
