from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from streaming import services


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("owner", password="pw")


@pytest.fixture
def make_stream(owner):
    def make(group: str = "test.group", **kwargs):
        return services.stream_create(group=group, owner=kwargs.pop("owner", owner), **kwargs)

    return make


@pytest.fixture
def amake_stream(make_stream):
    return sync_to_async(make_stream)


async def deltas(tokens: Iterable[str], *, pause: float = 0.0) -> AsyncIterator[str]:
    """A plain async generator of text deltas: the component's input, not an LLM."""
    import asyncio

    for token in tokens:
        await asyncio.sleep(pause)
        yield token
