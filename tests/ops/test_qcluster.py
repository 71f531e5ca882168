"""A real ``manage.py qcluster`` runs the reaper schedule against the shared test
database: the schedule rows ``migrate`` wrote are what production runs.

The broker is whatever the settings pick for the environment: the ORM broker on the
embedded defaults, Redis when REDIS_URL is set (on a Redis database of its own, so a
developer's cluster on the same Redis cannot take this test's tasks).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from django.utils import timezone
from django_q.models import Schedule

from chatproject.chat.models import Message
from streaming.core.lifecycle import Status
from streaming.schedules import PURGE, REAPER, ensure_schedules
from tests.ops.conftest import status_of
from tests.servers import ROOT, server_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# django-q2's guard loop calls the scheduler every 30 s, the first time 30 s after start.
WAIT_SECONDS = 75


def isolated_redis_url() -> str | None:
    """REDIS_URL with a database index of this test run's own, or None (ORM broker)."""
    url = os.environ.get("REDIS_URL")
    if not url:
        return None
    return urlunsplit(urlsplit(url)._replace(path=f"/{1 + os.getpid() % 15}"))


@dataclass
class QCluster:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> bool:
        """SIGINT to the main process (SIGTERM to the process group can deadlock it,
        django-q2#346); whether it stopped by itself, before being killed."""
        if self.process.poll() is not None:
            return True
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            return False
        return True


@pytest.fixture
def start_qcluster(transactional_db: None, tmp_path: Path) -> Iterator[Callable[[], QCluster]]:
    """Start ``manage.py qcluster`` on the test database; it is stopped before the
    database is flushed."""
    clusters: list[QCluster] = []

    def start() -> QCluster:
        log_path = tmp_path / f"qcluster-{len(clusters)}.log"
        process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=server_env(redis_url=isolated_redis_url(), llm_base_url=None),
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest alone
        )
        clusters.append(QCluster(process, log_path))
        return clusters[-1]

    yield start
    for cluster in clusters:
        cluster.stop()


def test_a_running_qcluster_reaps_an_expired_stream(make_stream, make_message, start_qcluster):
    stream = make_stream(Status.STREAMING, chunks=("Cut ", "short"), lease_in=timedelta(-1))
    message = make_message(stream)
    ensure_schedules()
    Schedule.objects.filter(name=REAPER).update(next_run=timezone.now() - timedelta(minutes=1))
    Schedule.objects.filter(name=PURGE).update(next_run=timezone.now() + timedelta(days=1))

    cluster = start_qcluster()
    deadline = time.monotonic() + WAIT_SECONDS
    while status_of(stream) != Status.TIMEOUT:
        exited = cluster.process.poll()
        if exited is not None or time.monotonic() > deadline:
            pytest.fail(f"the reaper did not run (exit code {exited}):\n{cluster.log()}")
        time.sleep(0.5)
    if redis_url := isolated_redis_url():  # the cluster reports to the Redis broker
        assert redis.Redis.from_url(redis_url).keys("django_q:chatproject:cluster:*")
    assert cluster.stop(), f"qcluster did not stop within 30 s of SIGINT:\n{cluster.log()}"

    message = Message.objects.get(pk=message.pk)
    assert (message.status, message.text) == ("timeout", "Cut short")
    assert Schedule.objects.get(name=REAPER).next_run > timezone.now()
