"""``purge_streams`` and ``reap_streams``: the scheduled jobs, run by hand."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from streaming.core.lifecycle import Status
from streaming.housekeeping import describe_duration, parse_duration
from streaming.models import Chunk, Stream
from tests.component.ops.conftest import status_of
from tests.servers import ROOT, server_env

MONTHS = timedelta(days=60)
BAD_DURATIONS = ["7x", "-1d", "", "1.5h", "7 days"]


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    """A management command in a process of its own, on the test database, with the
    test project's logging: what an operator's terminal shows."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=server_env(redis_url=None, settings_module="tests.component.settings"),
        capture_output=True,
        text=True,
        timeout=60,
    )


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


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (3600, "1 hour"),
        (30 * 86400, "30 days"),
        (90, "90 seconds"),
        (5400, "90 minutes"),
        (60, "1 minute"),
        (0, "0 seconds"),
    ],
)
def test_durations_read_as_people_say_them(seconds, words):
    assert describe_duration(timedelta(seconds=seconds)) == words


@pytest.mark.parametrize("text", [*BAD_DURATIONS, "99999999999999d"])
def test_a_malformed_duration_is_refused(text):
    with pytest.raises(ValueError, match=r"not a duration|longer than a century"):
        parse_duration(text)


@pytest.mark.django_db
def test_purge_streams_reports_what_it_removed(stream_in):
    stream_in(Status.DONE, chunks=("a", "b", "c"), finished_ago=MONTHS)
    stream_in(Status.DONE, finished_ago=MONTHS)
    assert run("purge_streams") == "Removed 2 streams and 5 chunks.\n"


@pytest.mark.django_db
def test_purge_streams_dry_run_reports_and_deletes_nothing(stream_in):
    stream_in(Status.DONE, finished_ago=MONTHS)
    assert run("purge_streams", "--dry-run") == "Would remove 1 stream and 2 chunks.\n"
    assert (Stream.objects.count(), Chunk.objects.count()) == (1, 2)


@pytest.mark.django_db
def test_older_than_purges_younger_streams_for_this_run(stream_in):
    stream_in(Status.DONE, finished_ago=timedelta(minutes=20))
    assert run("purge_streams", "--older-than", "15m") == "Removed 1 stream and 2 chunks.\n"


@pytest.mark.django_db
def test_verbosity_zero_prints_nothing(stream_in):
    stream_in(Status.DONE, finished_ago=MONTHS)
    assert run("purge_streams", "-v", "0") == ""
    assert not Stream.objects.exists()


@pytest.mark.django_db
def test_verbosity_two_states_the_policy_first(stream_in):
    lines = run("purge_streams", "-v", "2").splitlines()
    assert lines[0].startswith("Chunks of final streams older than 1 hour; final streams older ")
    assert "older than 30 days;" in lines[0]
    assert lines[1] == "Removed 0 streams and 0 chunks."


@pytest.mark.django_db
def test_verbosity_two_states_an_older_than_in_words(stream_in):
    lines = run("purge_streams", "-v", "2", "--older-than", "90s").splitlines()
    assert lines[0] == "Final streams and their chunks older than 90 seconds."


@pytest.mark.django_db
@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_a_malformed_older_than_is_an_error_and_deletes_nothing(stream_in, text):
    stream_in(Status.DONE, finished_ago=MONTHS)
    with pytest.raises(CommandError, match="older-than"):
        run("purge_streams", f"--older-than={text}")
    assert (Stream.objects.count(), Chunk.objects.count()) == (1, 2)


@pytest.mark.django_db
def test_a_malformed_older_than_given_as_a_keyword_is_an_error(stream_in):
    with pytest.raises(CommandError, match="not a duration"):
        call_command("purge_streams", older_than="7x")


@pytest.mark.parametrize("text", ["7x", "-1d", ""])
def test_a_malformed_older_than_exits_with_code_2(text):
    env = server_env(redis_url=None, settings_module="tests.component.settings")
    finished = subprocess.run(
        [sys.executable, "-m", "django", "purge_streams", "--older-than", text],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2
    assert "--older-than" in finished.stderr


def test_a_negative_older_than_is_answered_with_the_commands_own_message():
    finished = manage("purge_streams", "--older-than", "-1d")
    assert finished.returncode == 2
    assert "'-1d' is not a duration: an age cannot be negative" in finished.stderr
    assert "expected one argument" not in finished.stderr


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("command", "result"),
    [("purge_streams", "removed 1 stream"), ("reap_streams", "settled 1 expired stream")],
)
def test_a_job_run_by_hand_says_its_result_once(stream_in, command, result):
    stream_in(Status.DONE, finished_ago=MONTHS)
    stream_in(Status.STREAMING, lease_in=timedelta(seconds=-1))
    finished = manage(command)
    assert finished.returncode == 0, finished.stderr
    output = finished.stdout + finished.stderr
    assert output.lower().count(result) == 1, output


@pytest.mark.django_db
def test_reap_streams_reports_how_many_it_settled(stream_in):
    stream_in(Status.STREAMING, lease_in=timedelta(seconds=-1))
    stream_in(Status.PENDING, lease_in=timedelta(seconds=-1))
    stream_in(Status.STREAMING)
    assert run("reap_streams") == "Settled 2 expired streams as timeout.\n"


@pytest.mark.django_db
def test_reap_streams_dry_run_counts_and_settles_nothing(stream_in):
    expired = stream_in(Status.STREAMING, lease_in=timedelta(seconds=-1))
    stream_in(Status.STREAMING)
    assert run("reap_streams", "--dry-run") == "Would settle 1 expired stream as timeout.\n"
    assert status_of(expired) == Status.STREAMING
