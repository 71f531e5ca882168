"""Claiming is a compare-and-set: two processes racing on PostgreSQL never both win."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from streaming.models import Stream
from tests.servers import ROOT, server_env

pytestmark = pytest.mark.django_db(transaction=True)

CLAIMER = """
import json, os, sys, time
import django
django.setup()
from streaming.services import stream_claim
ids = json.loads(sys.argv[1]); start_at = float(sys.argv[2]); me = sys.argv[3]
while time.time() < start_at:
    pass
won = [i for i in ids if stream_claim(stream_id=i, driver_channel=me) is not None]
print(json.dumps(won))
"""


def test_two_processes_claiming_the_same_streams_never_both_win(postgres, make_stream, settings):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 0
    ids = [str(make_stream().id) for _ in range(200)]
    env = server_env(redis_url=None, llm_base_url=None, STREAMING_MAX_ACTIVE_PER_OWNER=0)
    start_at = str(time.time() + 3)
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, json.dumps(ids), start_at, f"claimer-{n}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    wins = [json.loads(claimer.communicate(timeout=60)[0]) for claimer in claimers]
    assert sorted(wins[0] + wins[1]) == sorted(ids)
    assert not set(wins[0]) & set(wins[1])
    assert wins[0] and wins[1], "both claimers should have raced"
    assert Stream.objects.filter(status="streaming").count() == len(ids)
    by_driver = dict(Stream.objects.values_list("id", "driver_channel"))
    assert all(by_driver[uuid.UUID(i)] == "claimer-0" for i in wins[0])
