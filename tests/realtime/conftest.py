from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from chatproject.asgi import application
from chatproject.chat.models import Conversation
from tests.servers import session_cookie
from tests.sockets import Socket


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
