"""A real ``qcluster`` runs the reaper schedule against the shared test database: the
schedule rows ``migrate`` wrote are what production runs. The component's test project
uses django-q's ORM broker (``Q_CLUSTER["orm"]``), so the cluster needs nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from django_q.models import Schedule

from streaming.core.lifecycle import Status
from streaming.models import Stream
from streaming.schedules import REAPER
from tests.component.ops.conftest import status_of
from tests.servers import QCluster, make_reaper_due, server_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def start_qcluster(transactional_db: None, tmp_path: Path) -> Iterator[Callable[[], QCluster]]:
    """``qcluster`` with the component's settings on the test database; stopped before
    the database is flushed."""
    clusters: list[QCluster] = []

    def start() -> QCluster:
        env = server_env(redis_url=None, settings_module="tests.component.settings")
        log_path = tmp_path / f"qcluster-{len(clusters)}.log"
        clusters.append(QCluster.start(log_path, [sys.executable, "-m", "django", "qcluster"], env))
        return clusters[-1]

    yield start
    for cluster in clusters:
        cluster.stop()


def test_a_running_qcluster_reaps_an_expired_stream(stream_in, start_qcluster):
    stream = stream_in(Status.STREAMING, chunks=("Cut ", "short"), lease_in=timedelta(-1))
    make_reaper_due()

    cluster = start_qcluster()
    cluster.wait_for(lambda: status_of(stream) == Status.TIMEOUT, "the reaper did not run")
    assert cluster.stop(), f"qcluster did not stop within 30 s of SIGINT:\n{cluster.log()}"

    assert Stream.objects.get(pk=stream.pk).text == "Cut short"
    assert Schedule.objects.get(name=REAPER).next_run > timezone.now()
