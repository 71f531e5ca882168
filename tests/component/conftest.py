"""Fixtures of the component's suite: users, streams, sockets on the trivial consumer,
and daphne serving the component's test project."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from streaming import services
from tests import sockets
from tests.component import app

pytest_plugins = ["tests.fixtures"]


@pytest.fixture(autouse=True)
def _forget_finished():
    app.finished.clear()


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("owner", password="pw")


@pytest.fixture
def make_stream(owner):
    def make(group: str = "test.group", **kwargs: Any):
        return services.stream_create(group=group, owner=kwargs.pop("owner", owner), **kwargs)

    return make


@pytest.fixture
def amake_stream(make_stream):
    return sync_to_async(make_stream)


@pytest.fixture
def amake_user(transactional_db):
    return sync_to_async(
        lambda name="ann": get_user_model().objects.create_user(name, password="pw")
    )


async def deltas(tokens: Iterable[Any], *, pause: float = 0.0) -> AsyncIterator[Any]:
    """A plain async generator of deltas: the component's input, not an LLM."""
    for token in tokens:
        await asyncio.sleep(pause)
        yield token


class Socket(sockets.Socket):
    """A socket of the trivial consumer, which starts streams of given words."""

    async def start(self, words: list[str], **options: Any) -> str:
        """Drive a new stream from this socket; its id once it started."""
        await self.send({"type": "start", "words": words, **options})
        return (await self.until(lambda f: f["type"] == "started"))["stream_id"]


@pytest.fixture
async def connect():
    """Open sockets on ``ws/rooms/<room>/`` as a user (all closed after the test)."""
    from tests.component.asgi import application

    opened = sockets.Sockets(application, Socket)
    yield lambda room, user=None: opened.open(f"/ws/rooms/{room}/", user)
    await opened.close_all()


@pytest.fixture
def start_daphne(tmp_path):
    """Daphne processes serving the component's test project on loopback."""
    from tests.servers import DaphneServer, server_env

    servers: list[DaphneServer] = []

    def start(*, redis_url: str | None = None, **extra: Any) -> DaphneServer:
        env = server_env(redis_url=redis_url, settings_module="tests.component.settings", **extra)
        server = DaphneServer(env, app="tests.component.asgi:application")
        servers.append(server.start(tmp_path))
        return server

    yield start
    for server in servers:
        server.stop()
