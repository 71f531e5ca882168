"""Claiming is a compare-and-set: two processes racing on PostgreSQL never both win."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streaming.models import Stream
from tests.servers import ROOT, server_env

pytestmark = pytest.mark.django_db(transaction=True)

#: Claims every stream it is given, as soon as the test says go (a line on stdin), and
#: prints the ids it won.
CLAIMER = """
import json, sys
import django
django.setup()
from django.db import connection
from streaming.services import stream_claim
ids = json.loads(sys.argv[1])
connection.ensure_connection()
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps([i for i in ids if stream_claim(stream_id=i) is not None]), flush=True)
"""


def test_two_processes_claiming_the_same_streams_never_both_win(postgres, make_stream, settings):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 0
    ids = [str(make_stream().id) for _ in range(200)]
    env = server_env(redis_url=None, settings_module="tests.component.settings")
    # From opposite ends, so that they meet: in the same order the later one trails the
    # other, losing every claim, and the race is not run.
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, json.dumps(order)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for order in (ids, ids[::-1])
    ]
    for claimer in claimers:  # both connected to the database and waiting
        assert claimer.stdout.readline() == "ready\n"
    for claimer in claimers:
        claimer.stdin.write("go\n")
        claimer.stdin.flush()
    wins = [json.loads(claimer.communicate(timeout=60)[0]) for claimer in claimers]
    assert sorted(wins[0] + wins[1]) == sorted(ids)
    assert not set(wins[0]) & set(wins[1])
    assert wins[0] and wins[1], "both claimers should have raced"
    assert Stream.objects.filter(status="streaming", started_at__isnull=False).count() == len(ids)
