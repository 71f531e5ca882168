"""The product's scheduler (``manage.py qcluster`` with the chat's settings): what it
logs. The reaping itself is the component's, tested in tests/component/ops."""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Success

from streaming import services
from streaming.models import Stream
from tests.servers import QCluster, make_reaper_due, server_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_scheduled_run_logs_what_it_did_and_no_per_run_lines(tmp_path):
    stream = services.stream_create(group="g", claimed=True)
    Stream.objects.filter(id=stream.id).update(lease_expires_at=timezone.now() - timedelta(1))
    make_reaper_due()

    env = server_env(redis_url=None)
    cluster = QCluster.start(
        tmp_path / "qcluster.log", [sys.executable, "manage.py", "qcluster"], env
    )
    try:
        # django-q saves the run's result, then logs "Processed": once the row exists,
        # the line would be in the log.
        cluster.wait_for(
            Success.objects.filter(func="streaming.tasks.reap_streams").exists,
            "the reaper did not run",
        )
    finally:
        assert cluster.stop()
    log = cluster.log()
    assert "reaper settled 1 expired streams as timeout" in log
    for per_run in ("from schedule", "Enqueued", "Processed '"):
        assert per_run not in log, log
