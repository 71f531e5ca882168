"""The trivial project code the component's tests run with: an adapter that records
what ends, and a websocket consumer that has nothing but the component's mixin plus a
``start`` frame that drives a stream of given words."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

import streaming
from streaming.asyncdb import run_in_db

#: Every stream the adapter saw end, in order (id, status, text): the project's hook.
finished: list[tuple[str, str, str]] = []


class RecordingAdapter(streaming.StreamAdapter):
    def stream_finished(self, stream: Any) -> None:
        finished.append((str(stream.id), stream.status, stream.text))


async def words(
    text: list[str], *, reasoning: list[str] = (), pause: float = 0.0, finish: dict | None = None
) -> AsyncIterator[str | streaming.Delta | streaming.Finish]:
    """A plain text source: reasoning deltas, then answer deltas, then a Finish."""
    for word in reasoning:
        await asyncio.sleep(pause)
        yield streaming.Delta(word, part="reasoning")
    for word in text:
        await asyncio.sleep(pause)
        yield word
    if finish is not None:
        yield streaming.Finish(**finish)


class StreamsConsumer(streaming.StreamConsumerMixin, AsyncJsonWebsocketConsumer):
    """``ws/rooms/<room>/``: a logged-in socket on the room's group."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        self.group = f"room.{self.scope['url_route']['kwargs']['room']}"
        await self.stream_join(self.group)
        await self.accept()

    async def receive_frame(self, content: dict[str, Any]) -> None:
        if content["type"] == "drive":
            await self.drive_pending(content)
            return
        if content["type"] != "start":
            await super().receive_frame(content)
            return
        stream = await run_in_db(
            streaming.create_stream,
            group=self.group,
            owner=self.scope["user"],
            claimed=True,
        )
        started = {"type": "started", "stream_id": str(stream.id)}
        await self.send_json(started)
        # Every other socket of the room learns of the stream, as a chat's message
        # frame would tell it, and follows its chunks from now on.
        await self.channel_layer.group_send(
            self.group, {"type": "room.started", "frame": started, "sender": self.channel_name}
        )
        source = words(
            content.get("words", []),
            reasoning=content.get("reasoning", []),
            pause=float(content.get("pause", 0)),
            finish=content.get("finish"),
        )
        self.stream_drive(str(stream.id), source)

    async def drive_pending(self, content: dict[str, Any]) -> None:
        """``drive``: drive a stream created unclaimed elsewhere if no socket does yet."""
        stream_id = content["stream_id"]
        if not await self.stream_claim(stream_id):
            await self.send_json({"type": "following", "stream_id": stream_id})
            return
        await self.send_json({"type": "driving", "stream_id": stream_id})
        self.stream_drive(stream_id, words(content.get("words", []), pause=0.01))

    async def room_started(self, event: dict[str, Any]) -> None:
        if event["sender"] != self.channel_name:
            self.stream_follow(event["frame"]["stream_id"])
            await self.send_json(event["frame"])
