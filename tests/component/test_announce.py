"""Announcing a writer round's frames: each group gets its own event, through one call
to a layer that takes many groups at once, and a layer that fails loses frames (counted)
without raising into the writer."""

from __future__ import annotations

from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer
from prometheus_client import REGISTRY

from streaming import frames
from streaming.frames import aannounce_many, chunk_frame, group_event


def dropped() -> float:
    labels = {"reason": "announce_failed"}
    return REGISTRY.get_sample_value("streaming_frames_dropped_total", labels) or 0.0


class ManyAtOnce(InMemoryChannelLayer):
    """An in-memory layer with ``group_send_many``, which records its calls."""

    def __init__(self, fail: BaseException | None = None) -> None:
        super().__init__()
        self.calls: list[list[tuple[str, dict[str, Any]]]] = []
        self.fail = fail

    async def group_send_many(self, sends: list[tuple[str, dict[str, Any]]]) -> None:
        self.calls.append(list(sends))
        if self.fail is not None:
            raise self.fail
        for group, message in sends:
            await self.group_send(group, message)


ROUND = [
    ("one", [chunk_frame("s1", 0, "text", "A. ")]),
    ("two", [chunk_frame("s2", 3, "text", "B. "), chunk_frame("s2", 4, "text", "C.")]),
    ("three", []),  # nothing to say: not sent
]


@pytest.fixture
def use_layer(monkeypatch):
    def use(layer: InMemoryChannelLayer) -> InMemoryChannelLayer:
        monkeypatch.setattr(frames, "get_channel_layer", lambda: layer)
        return layer

    return use


async def members(layer: InMemoryChannelLayer) -> dict[str, str]:
    channels = {}
    for group, _ in ROUND:
        channels[group] = await layer.new_channel()
        await layer.group_add(group, channels[group])
    return channels


async def test_a_round_reaches_each_group_in_one_call_to_a_layer_that_takes_many(use_layer):
    layer = use_layer(ManyAtOnce())
    channels = await members(layer)
    await aannounce_many(ROUND)
    assert [[group for group, _ in call] for call in layer.calls] == [["one", "two"]]
    assert await layer.receive(channels["one"]) == group_event(ROUND[0][1])
    assert await layer.receive(channels["two"]) == group_event(ROUND[1][1])


async def test_a_round_reaches_each_group_through_a_layer_with_only_group_send(use_layer):
    layer = use_layer(InMemoryChannelLayer())
    channels = await members(layer)
    await aannounce_many(ROUND)
    assert await layer.receive(channels["one"]) == group_event(ROUND[0][1])
    assert await layer.receive(channels["two"]) == group_event(ROUND[1][1])


async def test_a_layer_that_is_away_loses_the_rounds_frames_counted_without_raising(
    use_layer, caplog
):
    use_layer(ManyAtOnce(fail=ConnectionError("Redis is away")))
    before = dropped()
    await aannounce_many(ROUND)
    assert dropped() - before == 3
    assert "could not announce chunk to one and 1 more group(s)" in caplog.text
