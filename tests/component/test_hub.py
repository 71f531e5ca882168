"""The process hub on a real Redis layer: it shares the process's receive loop with the
websocket consumers of the same process, so neither starves the other."""

from __future__ import annotations

import os

import pytest

from streaming.hub import get_hub
from tests.fixtures import require

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_layer(settings) -> str:
    """The channels-redis layer of a server process, on REDIS_URL or TEST_REDIS_URL."""
    url = os.environ.get("REDIS_URL") or os.environ.get("TEST_REDIS_URL", "")
    require(bool(url), "Redis is not configured: export REDIS_URL or TEST_REDIS_URL")
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "streaming.layers.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": 30}]},
        }
    }
    return url


async def test_a_socket_gets_its_streams_chunks_while_the_process_hub_listens_on_redis(
    redis_layer, amake_user, connect
):
    # The hub starts first, as in a server that already drove or followed a stream.
    await get_hub()
    _, socket = await connect("hub", user=await amake_user())
    stream_id = await socket.start(["One. ", "Two."])
    final = await socket.until_final(stream_id, timeout=10)
    assert final["status"] == "done"
    assert socket.joined("chunk", stream_id) == "One. Two."
