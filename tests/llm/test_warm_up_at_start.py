"""A serving process warms its LLM provider up once, beside its first connection (daphne
sends no lifespan events): the first prompt then finds the client and a connection
ready, which with a remote server saves its TCP and TLS handshakes."""

from __future__ import annotations

import asyncio

import pytest

from chatproject.llm.warm import WarmUpProvider
from tests.fake_llm import FakeLLMServer
from tests.servers import http_get_json

pytestmark = pytest.mark.django_db(transaction=True)


def test_daphnes_first_request_warms_the_provider_up_once(start_daphne, fake_llm: FakeLLMServer):
    server = start_daphne(llm_base_url=fake_llm.base_url)
    assert fake_llm.model_lists == 0  # listening is not serving
    for _ in range(3):
        status, _ = http_get_json(server, "/api/conversations/1/messages/", None)
        assert status == 403
    assert fake_llm.wait_for(lambda: fake_llm.model_lists >= 1)
    assert fake_llm.model_lists == 1


async def test_each_event_loop_warms_up_once_and_the_app_still_serves(settings, fake_llm):
    settings.LLM_PROVIDER = "openai"
    settings.LLM_BASE_URL = fake_llm.base_url
    served: list[str] = []

    async def app(scope, receive, send):
        served.append(scope["type"])

    warm = WarmUpProvider(app)
    await warm({"type": "http"}, None, None)
    await warm({"type": "websocket"}, None, None)
    assert await fake_llm.wait_for_async(lambda: fake_llm.model_lists == 1)
    await asyncio.sleep(0.05)  # a second warm-up would have had time to arrive
    assert (served, fake_llm.model_lists) == (["http", "websocket"], 1)
