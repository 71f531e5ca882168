"""Fixtures of the reliability scenarios (faults, abuse, load) on real processes.

Every scenario prints what it tried, what it measured and what held, one line each,
prefixed with its name: run pytest with ``-s`` to see them (they are also recorded as
junit properties).
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.reliability import support


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so --strict-markers accepts it wherever the suite runs.
    config.addinivalue_line(
        "markers",
        "outage: stops a backing service mid-test: the machine's PostgreSQL cluster for a "
        "few seconds (a suite running beside it on that cluster sees errors meanwhile), or "
        "the test's own redis-server",
    )


@pytest.fixture
def report(request: pytest.FixtureRequest, record_property):
    """``report(key, text)``: print one line of the scenario's story and record it."""

    def say(key: str, text: str) -> None:
        print(f"\n[{request.node.name}] {key}: {text}", flush=True)
        record_property(key, text)

    return say


@pytest.fixture
def redis_url(private_redis) -> str:
    return private_redis.url()


@pytest.fixture
def test_process_layer(settings, redis_url: str) -> str:
    """Make the test process announce frames on the servers' Redis layer, so that a
    stream it settles (the reaper, called from the test) reaches their sockets."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": redis_url, "socket_timeout": 30}]},
        }
    }
    return redis_url


@pytest.fixture
def postgres_outage(postgres):
    """``await postgres_outage.stop()`` / ``.start()``: the machine's PostgreSQL cluster
    stopped and started again; it always runs again after the test, and the test
    process's own (broken) connections are dropped before the database is flushed."""
    if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        pytest.skip("no pg_ctlcluster here: cannot stop PostgreSQL")
    outage = support.PostgresOutage()
    yield outage
    outage.ensure_running()
    support.drop_connections()
