"""Stopping a server: its background drivers end ``error`` with what they were shown,
and every follower hears of it before the process goes."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer

from streaming.driver import SERVER_STOPPED, drive_in_background, stop_background_drivers

pytestmark = pytest.mark.django_db(transaction=True)


async def test_stopping_the_drivers_returns_after_their_final_statuses_are_announced(
    amake_stream, monkeypatch
):
    layer = get_channel_layer()
    announced: list[dict] = []
    real_group_send = layer.group_send

    async def slow_group_send(group, message):
        await asyncio.sleep(0.05)  # a channel layer over the network
        announced.extend(message.get("frames", []))
        await real_group_send(group, message)

    monkeypatch.setattr(layer, "group_send", slow_group_send)
    if hasattr(layer, "group_send_many"):  # the Redis layer: the writer sends through it
        real_group_send_many = layer.group_send_many

        async def slow_group_send_many(sends):
            await asyncio.sleep(0.05)
            announced.extend(f for _, message in sends for f in message.get("frames", []))
            await real_group_send_many(sends)

        monkeypatch.setattr(layer, "group_send_many", slow_group_send_many)
    stream = await amake_stream()
    shown = asyncio.Event()

    async def stalls():
        yield "Shown. "
        shown.set()
        await asyncio.sleep(3600)

    drive_in_background(stream.id, stalls())
    await asyncio.wait_for(shown.wait(), 5)
    await stop_background_drivers()
    finals = [f for f in announced if f["type"] == "status" and f["last_seq"] is not None]
    assert [(f["status"], f["error"]) for f in finals] == [("error", SERVER_STOPPED)]
