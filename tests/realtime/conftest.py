from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from chatproject.asgi import application
from chatproject.chat.models import Conversation
from tests.sockets import Socket, Sockets


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
    """Open sockets on a conversation as a user, from an Origin (closed after the test)."""
    opened = Sockets(application, Socket)
    yield lambda conversation_id, user=None, origin=b"http://localhost": opened.open(
        f"/ws/conversations/{conversation_id}/", user, origin
    )
    await opened.close_all()


@pytest.fixture
def use_fake_llm(settings, fake_llm):
    settings.LLM_PROVIDER = "openai"
    settings.LLM_BASE_URL = fake_llm.base_url
    settings.LLM_API_KEY = "test"
    return fake_llm
