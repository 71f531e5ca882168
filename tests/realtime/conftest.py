from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from chatproject.asgi import application
from chatproject.chat.models import Conversation
from tests.servers import session_cookie

FINAL = {"done", "error", "cancelled", "timeout"}


class Socket:
    """A websocket client of the chat consumer, in process, with frame helpers."""

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

    async def until(self, predicate, timeout: float = 15) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.next(timeout)
                if predicate(frame):
                    return frame

    async def until_final(
        self, stream_id: str | None = None, timeout: float = 15
    ) -> dict[str, Any]:
        return await self.until(
            lambda f: (
                f["type"] == "status"
                and f["status"] in FINAL
                and (stream_id is None or f["stream_id"] == stream_id)
            ),
            timeout,
        )

    async def expect_quiet(self, timeout: float = 0.3) -> None:
        assert await self.communicator.receive_nothing(timeout=timeout), self.communicator

    def joined(self, kind: str, stream_id: str) -> str:
        return "".join(
            f["text"] for f in self.frames if f["type"] == kind and f.get("stream_id") == stream_id
        )

    def seqs(self, stream_id: str) -> list[int]:
        return [
            f["seq"] for f in self.frames if f["type"] == "chunk" and f["stream_id"] == stream_id
        ]

    async def close(self) -> None:
        await self.communicator.disconnect()


@pytest.fixture
def make_user(transactional_db):
    def make(name: str = "ann"):
        return get_user_model().objects.create_user(name, password="pw")

    return sync_to_async(make)


@pytest.fixture
def make_conversation(transactional_db):
    return sync_to_async(lambda owner: Conversation.objects.create(owner=owner))


@pytest.fixture
async def connect():
    sockets: list[Socket] = []

    async def open_socket(
        conversation_id: int, user: Any = None, origin: bytes = b"http://localhost"
    ) -> tuple[bool, Socket]:
        headers = [(b"origin", origin), (b"host", b"localhost")]
        if user is not None:
            cookie = await sync_to_async(session_cookie)(user)
            headers.append((b"cookie", cookie.encode()))
        communicator = WebsocketCommunicator(
            application, f"/ws/conversations/{conversation_id}/", headers=headers
        )
        connected, _ = await communicator.connect()
        socket = Socket(communicator)
        if connected:
            sockets.append(socket)
        return connected, socket

    yield open_socket
    for socket in sockets:
        await socket.close()


@pytest.fixture
def use_fake_llm(settings, fake_llm):
    settings.LLM_PROVIDER = "openai"
    settings.LLM_BASE_URL = fake_llm.base_url
    settings.LLM_API_KEY = "test"
    return fake_llm


@pytest.fixture(autouse=True)
async def _drivers_finish():
    """Background drivers outlive sockets by design; let each test's finish before the
    database is torn down."""
    yield
    from streaming.driver import _background

    if _background:
        _, pending = await asyncio.wait(list(_background), timeout=10)
        for task in pending:
            task.cancel()
