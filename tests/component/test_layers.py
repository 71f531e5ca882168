"""The component's Redis layer (on a private Redis server): it rides out a Redis restart,
keeps the stock layer's capacity and expiry, and delivers a process's own messages
without Redis, in order."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from channels.exceptions import ChannelFull
from redis import asyncio as aioredis

from streaming.layers import RedisChannelLayer


async def test_a_member_keeps_receiving_group_messages_after_redis_restarts(private_redis):
    hosts = [{"address": private_redis.url(), "socket_timeout": 30}]
    layer, other_process = RedisChannelLayer(hosts=hosts), RedisChannelLayer(hosts=hosts)
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    received = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.3)
    await private_redis.arestart(down_for=0.5)
    async with asyncio.timeout(20):
        while not received.done():
            with contextlib.suppress(Exception):
                await other_process.group_send("room", {"type": "hello"})
            await asyncio.sleep(0.2)
    assert received.result() == {"type": "hello"}
    await other_process.close_pools()
    await layer.flush()


async def test_a_group_send_reaches_each_member_but_one_at_its_capacity(private_redis):
    layer = RedisChannelLayer(hosts=[private_redis.url()], channel_capacity={"full*": 1})
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
    layer = RedisChannelLayer(hosts=[private_redis.url()], group_expiry=60)
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


async def pumping(layer: RedisChannelLayer) -> asyncio.Task[dict]:
    """A receive waiting on a channel of the layer's process, so the process receives (as
    a server with any open socket does); returned once the pump blocks on Redis."""
    waiting = asyncio.create_task(layer.receive(await layer.new_channel()))
    async with asyncio.timeout(5), aioredis.from_url(layer.hosts[0]["address"]) as redis:
        while not any(c["cmd"] == "bzpopmin" for c in await redis.client_list()):
            await asyncio.sleep(0.01)
    return waiting


async def member_here(
    url: str, prefix: str = "specific", **config: Any
) -> tuple[RedisChannelLayer, str]:
    """A layer whose process receives, and a channel of that process in group "room"."""
    layer = RedisChannelLayer(hosts=[url], **config)
    await pumping(layer)
    here = await layer.new_channel(prefix)
    await layer.group_add("room", here)
    return layer, here


async def test_a_group_message_to_a_member_in_the_process_takes_one_redis_call(private_redis):
    layer, here = await member_here(private_redis.url())

    async def calls() -> int:
        stats = await redis.info("commandstats")
        return sum(int(entry["calls"]) for entry in stats.values())

    async with aioredis.from_url(layer.hosts[0]["address"]) as redis:
        await layer.group_send("room", {"type": "warm"})  # connects (HELLO, CLIENT SETINFO)
        before = await calls()
        await layer.group_send("room", {"type": "hello"})
        after = await calls()
    assert [await layer.receive(here), await layer.receive(here)] == [
        {"type": "warm"},
        {"type": "hello"},
    ]
    # The members' script (EVAL, and the ZREMRANGEBYSCORE and ZRANGE it runs), and the
    # first INFO itself.
    assert after - before == 4
    await layer.flush()


async def test_a_group_message_reaches_members_here_and_in_another_process(private_redis):
    hosts = [private_redis.url()]
    layer, other_process = RedisChannelLayer(hosts=hosts), RedisChannelLayer(hosts=hosts)
    await pumping(layer)
    here, there = await layer.new_channel(), await other_process.new_channel()
    for member, its_layer in ((here, layer), (there, other_process)):
        await its_layer.group_add("room", member)
    await layer.group_send("room", {"type": "from here"})
    await other_process.group_send("room", {"type": "from there"})
    assert [await layer.receive(here), await layer.receive(here)] == [
        {"type": "from here"},
        {"type": "from there"},
    ]
    assert [await other_process.receive(there), await other_process.receive(there)] == [
        {"type": "from here"},
        {"type": "from there"},
    ]
    await other_process.flush()
    await layer.close_pools()


async def commands(redis: aioredis.Redis) -> dict[str, int]:
    """Calls so far per Redis command (lower case)."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


async def test_one_send_of_many_groups_reaches_each_groups_members_here_and_elsewhere(
    private_redis,
):
    layer, here = await member_here(private_redis.url())  # in "room"
    other_process = RedisChannelLayer(hosts=[private_redis.url()])
    there = await other_process.new_channel()
    await layer.group_add("hall", here)
    for group in ("room", "hall", "yard"):
        await other_process.group_add(group, there)
    sends = [("room", {"type": "r"}), ("hall", {"type": "h"}), ("yard", {"type": "y"})]
    await layer.group_send_many(sends)
    assert [await layer.receive(here), await layer.receive(here)] == [{"type": "r"}, {"type": "h"}]
    got = [await other_process.receive(there) for _ in range(3)]
    assert sorted(m["type"] for m in got) == ["h", "r", "y"]
    await other_process.flush()
    await layer.close_pools()


async def test_one_send_of_many_groups_delivers_elsewhere_in_one_script(private_redis):
    layer, _ = await member_here(private_redis.url())
    other_process = RedisChannelLayer(hosts=[private_redis.url()])
    groups = [f"room{n}" for n in range(20)]
    for group in groups:
        await other_process.group_add(group, await other_process.new_channel())
    async with aioredis.from_url(private_redis.url()) as redis:
        await layer.group_send("room", {"type": "warm"})  # connects
        before = await commands(redis)
        await layer.group_send_many([(group, {"type": "hello"}) for group in groups])
        after = await commands(redis)
    added = {name: after[name] - before.get(name, 0) for name in after}
    # One script trims and lists each group; one trims each channel and delivers.
    assert (added["zrange"], added["eval"], added["zadd"]) == (20, 2, 20)
    assert added["zremrangebyscore"] == 20 + 20
    await other_process.flush()
    await layer.close_pools()


async def test_sends_and_group_messages_to_a_channel_here_arrive_in_the_order_sent(
    private_redis,
):
    layer, here = await member_here(private_redis.url())
    for n in range(40):
        if n % 2:
            await layer.send(here, {"type": "n", "n": n})
        else:
            await layer.group_send("room", {"type": "n", "n": n})
    assert [(await layer.receive(here))["n"] for _ in range(40)] == list(range(40))
    await layer.flush()


async def test_a_member_here_gets_a_copy_as_redis_would_deliver_it(private_redis):
    layer, here = await member_here(private_redis.url())
    message = {"type": "frames", "frames": [{"seq": 0}], "pair": (1, 2)}
    await layer.group_send("room", message)
    message["frames"].append({"seq": 1})
    assert await layer.receive(here) == {"type": "frames", "frames": [{"seq": 0}], "pair": [1, 2]}
    await layer.flush()


async def test_a_channel_here_at_its_capacity_misses_group_messages_and_refuses_sends(
    private_redis,
):
    layer, full = await member_here(private_redis.url(), "full", channel_capacity={"full*": 1})
    await layer.group_send("room", {"type": "first"})
    await layer.group_send("room", {"type": "second"})
    with pytest.raises(ChannelFull):
        await layer.send(full, {"type": "third"})
    assert await layer.receive(full) == {"type": "first"}
    await layer.send(full, {"type": "fourth"})
    assert await layer.receive(full) == {"type": "fourth"}
    await layer.flush()


async def test_a_cancelled_receive_loses_no_message_of_another_channel(private_redis):
    hosts = [private_redis.url()]
    layer, other_process = RedisChannelLayer(hosts=hosts), RedisChannelLayer(hosts=hosts)
    leaving, staying = await layer.new_channel(), await layer.new_channel()
    staying_gets = asyncio.create_task(layer.receive(staying))
    for _ in range(20):  # a receive that ends while another waits
        leaving_gets = asyncio.create_task(layer.receive(leaving))
        await asyncio.sleep(0.01)
        await other_process.send(staying, {"type": "hello"})
        leaving_gets.cancel()
        async with asyncio.timeout(5):
            assert await staying_gets == {"type": "hello"}
        staying_gets = asyncio.create_task(layer.receive(staying))
    staying_gets.cancel()
    await other_process.flush()
    await layer.close_pools()


def test_a_layer_receives_again_on_a_new_event_loop(private_redis):
    layer = RedisChannelLayer(hosts=[private_redis.url()])

    async def round_trip() -> dict:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "hello"})
        received = await layer.receive(channel)
        await layer.close_pools()
        return received

    assert asyncio.run(round_trip()) == asyncio.run(round_trip()) == {"type": "hello"}
