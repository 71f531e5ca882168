"""The component's Redis layer rides out a Redis restart (on a private Redis server)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time

import pytest

from streaming.layers import RedisChannelLayer
from tests.fixtures import require
from tests.servers import free_port


@pytest.fixture
def private_redis():
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    port = free_port()
    command = [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
    ]

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        for _ in range(50):
            if (
                subprocess.run(
                    ["redis-cli", "-p", str(port), "ping"], capture_output=True
                ).returncode
                == 0
            ):
                return process
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    servers = [start()]
    yield port, servers, start
    for server in servers:
        server.kill()
        server.wait()


async def test_a_member_keeps_receiving_group_messages_after_redis_restarts(private_redis):
    port, servers, start = private_redis
    layer = RedisChannelLayer(
        hosts=[{"address": f"redis://127.0.0.1:{port}/0", "socket_timeout": 30}]
    )
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    received = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.3)
    servers[0].kill()
    servers[0].wait()
    await asyncio.sleep(0.5)
    servers.append(await asyncio.to_thread(start))
    async with asyncio.timeout(20):
        while not received.done():
            with contextlib.suppress(Exception):
                await layer.group_send("room", {"type": "hello"})
            await asyncio.sleep(0.2)
    assert received.result() == {"type": "hello"}
    await layer.flush()


async def test_a_group_send_reaches_each_member_but_one_at_its_capacity(private_redis):
    port, _, _ = private_redis
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0"], channel_capacity={"full*": 1})
    roomy, full = await layer.new_channel(), await layer.new_channel("full")
    for channel in (roomy, full):
        await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "first"})
    await layer.group_send("room", {"type": "second"})
    got = [await layer.receive(roomy), await layer.receive(roomy), await layer.receive(full)]
    assert got == [{"type": "first"}, {"type": "second"}, {"type": "first"}]
    await layer.group_send("room", {"type": "third"})  # full has room again
    assert await layer.receive(full) == {"type": "third"}
    await layer.flush()


async def test_a_group_send_skips_members_whose_membership_expired(private_redis):
    port, _, _ = private_redis
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0"], group_expiry=60)
    gone, here = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", gone)
    await layer.group_add("room", here)
    key = layer._group_key("room")
    async with layer.connection(layer.consistent_hash("room")) as redis:
        await redis.zadd(key, {gone: time.time() - 61})  # joined longer ago than the expiry
    await layer.group_send("room", {"type": "hello"})
    assert await layer.receive(here) == {"type": "hello"}
    async with layer.connection(layer.consistent_hash("room")) as redis:
        assert await redis.zrange(key, 0, -1) == [here.encode()]
    await layer.flush()
