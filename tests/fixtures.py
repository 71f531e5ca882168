"""Fixtures and helpers shared by both suites: the product's (tests/) and the
component's (tests/component/, run alone under its own minimal settings).

Services (PostgreSQL, Redis) are real: a test that needs Redis skips with the reason
when it is not configured, and fails instead under ``CI=true``, so CI never passes by
skipping. PostgreSQL-only tests run in .ci/run's PostgreSQL pass.
"""

from __future__ import annotations

import os
import shutil

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from tests.fake_llm import fake_llm  # noqa: F401  (fixture)
from tests.servers import PrivateRedis, free_port

IN_CI = os.environ.get("CI", "").lower() == "true"


def parts_of(batches) -> dict[str, str]:
    """The text of ``(part, text)`` batches per part: what a driver that wrote them as a
    stream's first chunks holds for ``stream_end``."""
    parts: dict[str, str] = {}
    for part, text in batches:
        parts[part] = parts.get(part, "") + text
    return parts


def chunks_text(stream_id) -> dict[str, str]:
    """The text of a stream's chunks per part, as a driver whose every write was
    acknowledged holds it for ``stream_end``."""
    from streaming.models import Chunk

    return parts_of(Chunk.objects.filter(stream_id=stream_id).values_list("part", "text"))


def require(condition: bool, reason: str) -> None:
    """Skip a test whose service is missing; under CI=true, fail it instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture
def postgres() -> None:
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"]
    if engine != "django.db.backends.postgresql":
        # Not a missing service: .ci/run's second pass runs these on PostgreSQL.
        pytest.skip("PostgreSQL only: runs in the pass with DATABASE_URL=postgres://…")


@pytest.fixture(autouse=True)
def _fast_hashing(settings):
    """A fast password hasher (~0.5 s a login saved)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
async def _close_db_connections():
    """Async ORM calls run on worker threads; close their connections after each test,
    or teardown waits on 'database is being accessed by other users'."""
    yield
    await sync_to_async(close_all_connections)()


def close_all_connections() -> None:
    """Close this context's connections, and the PostgreSQL pool's idle sessions, or the
    test database cannot be dropped at the end ("being accessed by other users")."""
    for connection in connections.all(initialized_only=True):
        connection.close()
        if hasattr(connection, "close_pool"):  # PostgreSQL
            connection.close_pool()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """Give the test database a per-run name other processes can open: daphne servers
    started by integration tests share it (SQLite in memory could not be shared), and
    two runs on one machine (a developer's and CI's) never collide."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        db.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")
    else:
        db.setdefault("TEST", {})["NAME"] = f"test_{db['NAME']}_{os.getpid()}"


@pytest.fixture
def test_redis_url() -> str:
    """Redis for the multi-process tests: REDIS_URL, or TEST_REDIS_URL when the test
    process itself runs on the in-memory layer."""
    url = os.environ.get("REDIS_URL") or os.environ.get("TEST_REDIS_URL", "")
    require(bool(url), "Redis is not configured: export REDIS_URL or TEST_REDIS_URL")
    return url


@pytest.fixture(autouse=True)
def _no_claims_carried_over():
    """Streams created ``claimed`` are this process's to drive: a test that left one
    undriven must not hand it to the next."""
    from streaming import services

    services.take_all_claims()


@pytest.fixture(autouse=True)
async def _drivers_finish():
    """Background drivers outlive sockets by design; let each test's finish before the
    database is torn down."""
    import asyncio

    yield
    from streaming.driver import _background

    if _background:
        _, pending = await asyncio.wait(list(_background), timeout=10)
        for task in pending:
            task.cancel()


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of the test's own on a free port (``tests.servers.PrivateRedis``):
    the servers' groups (named after conversation ids, which every test database
    repeats) never meet another test run's on a shared Redis, outages and command counts
    disturb nobody else, and the test may restart it at will. Shut down after the test."""
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    yield server
    server.shutdown()
