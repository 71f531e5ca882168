"""An in-process websocket client with frame helpers, shared by the component's suite
(the trivial consumer) and the product's (the chat consumer)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from tests.servers import session_cookie

FINAL = {"done", "error", "cancelled", "timeout"}


class Socket:
    """One websocket of a test: what it sends, and every frame it received, in order."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.frames: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.communicator.send_json_to(frame)

    async def send_raw(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        frame = await self.communicator.receive_json_from(timeout=timeout)
        self.frames.append(frame)
        return frame

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.next(timeout)
                if predicate(frame):
                    return frame

    async def until_final(
        self, stream_id: str | None = None, timeout: float = 15
    ) -> dict[str, Any]:
        """The next final ``status`` frame (of one stream, if named)."""
        return await self.until(
            lambda f: (
                f["type"] == "status"
                and f["status"] in FINAL
                and (stream_id is None or f["stream_id"] == stream_id)
            ),
            timeout,
        )

    async def settled(self) -> None:
        """Every frame sent before this one has been handled (a socket handles its
        frames in order): a ping, answered with an ``unknown_type`` error."""
        await self.send({"type": "ping"})
        await self.until(lambda f: f["type"] == "error" and f["code"] == "unknown_type")

    def joined(self, kind: str, stream_id: str, part: str = "text") -> str:
        """The text of this socket's ``kind`` frames of one stream and part, in order."""
        return "".join(
            f["text"]
            for f in self.frames
            if f["type"] == kind and f.get("stream_id") == stream_id and f.get("part") == part
        )

    def seqs(self, stream_id: str) -> list[int]:
        """The seqs of this socket's chunks of one stream, in arrival order."""
        return [
            f["seq"] for f in self.frames if f["type"] == "chunk" and f["stream_id"] == stream_id
        ]

    async def close(self) -> None:
        await self.communicator.disconnect()


class Sockets[S: Socket]:
    """The sockets a test opens on an ASGI application, as a user or anonymously, from
    an Origin; the ones that connected are closed together at the test's end."""

    def __init__(self, application: Any, socket_class: type[S]) -> None:
        self.application = application
        self.socket_class = socket_class
        self.opened: list[S] = []

    async def open(
        self, path: str, user: Any = None, origin: bytes = b"http://localhost"
    ) -> tuple[bool, S]:
        headers = [(b"origin", origin), (b"host", b"localhost")]
        if user is not None:
            cookie = await sync_to_async(session_cookie)(user)
            headers.append((b"cookie", cookie.encode()))
        communicator = WebsocketCommunicator(self.application, path, headers=headers)
        connected, _ = await communicator.connect()
        socket = self.socket_class(communicator)
        if connected:
            self.opened.append(socket)
        return connected, socket

    async def close_all(self) -> None:
        for socket in self.opened:
            await socket.close()
