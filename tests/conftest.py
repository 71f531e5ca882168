"""Fixtures of the product's suite (the shared ones are in tests/fixtures.py)."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.fixtures"]


@pytest.fixture(autouse=True)
def _fast_demo(settings):
    """The demo LLM at full speed."""
    settings.LLM_DEMO_TOKENS_PER_SECOND = 0


@pytest.fixture
def start_daphne(tmp_path):
    """Start daphne servers on loopback; all are stopped after the test."""
    from tests.servers import DaphneServer, server_env

    servers: list[DaphneServer] = []

    def start(*, redis_url: str | None = None, llm_base_url: str | None = None, **extra):
        server = DaphneServer(server_env(redis_url=redis_url, llm_base_url=llm_base_url, **extra))
        servers.append(server.start(tmp_path))
        return server

    yield start
    for server in servers:
        server.stop()
