"""Two daphne processes sharing Redis and the database, real websocket clients over TCP:
the driver on one process, viewers on the other, a late joiner and a reconnecting viewer.

The contract's invariant must hold: the driver's tokens joined = every viewer's chunks
joined (consecutive seqs from 0, or a snapshot then consecutive seqs) = the HTTP API's
text = the final message text; and the LLM was called once.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from chatproject.chat.models import Conversation, Message
from tests.servers import WsClient, http_get_json, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

REPLY = " ".join(
    f"Sentence {i} says something useful{'!' if i % 5 == 0 else '.'}" for i in range(60)
)


@sync_to_async
def conversation_with_session(name: str = "ann") -> tuple[Conversation, str, object]:
    user = get_user_model().objects.create_user(name, password="pw")
    return Conversation.objects.create(owner=user), session_cookie(user), user


async def two_servers_and_a_conversation(start_daphne, redis_url, fake_llm):
    """Two daphne processes sharing Redis, and a user's conversation: (front, back, path,
    session cookie)."""
    front = start_daphne(redis_url=redis_url, llm_base_url=fake_llm.base_url)
    back = start_daphne(redis_url=redis_url, llm_base_url=fake_llm.base_url)
    conversation, cookie, _ = await conversation_with_session()
    return front, back, f"/ws/conversations/{conversation.pk}/", cookie


async def test_driver_viewers_late_joiner_and_reconnect_see_one_text_across_processes(
    start_daphne, test_redis_url, fake_llm
):
    fake_llm.reply = REPLY
    fake_llm.token_delay = 0.01
    front, back, path, cookie = await two_servers_and_a_conversation(
        start_daphne, test_redis_url, fake_llm
    )
    rng = random.Random(4)

    driver = await WsClient(front, path, cookie).connect()
    viewers = [await WsClient(back, path, cookie).connect() for _ in range(2)]
    stream_id = await driver.prompt("Tell me sixty things.")

    async def late_joiner() -> WsClient:
        # Late: after the driver has been shown a random part of the answer.
        joins_at = rng.randint(3, 30)
        await driver.when(lambda: driver.reached(stream_id, joins_at))
        client = await WsClient(back, path, cookie).connect()
        await client.send({"type": "resume", "stream_id": stream_id, "after": -1})
        await client.until_final(stream_id)
        return client

    async def reconnecting_viewer() -> WsClient:
        first = await WsClient(back, path, cookie).connect()
        await first.send({"type": "resume", "stream_id": stream_id, "after": -1})
        await first.until(lambda f: f["type"] == "chunk" and f["seq"] >= rng.randint(2, 8))
        held = first.streams[stream_id]
        await first.close()
        # Away while a few more chunks are broadcast.
        away_until = held.last_seq + rng.randint(2, 8)
        await driver.when(lambda: driver.reached(stream_id, away_until))
        second = await WsClient(back, path, cookie).connect()
        second.streams[stream_id] = held  # what the page still shows
        await second.send({"type": "resume", "stream_id": stream_id, "after": held.last_seq})
        await second.until_final(stream_id)
        return second

    late_task = asyncio.create_task(late_joiner())
    reconnect_task = asyncio.create_task(reconnecting_viewer())
    driven = await driver.until_final(stream_id)
    watched = [await viewer.until_final(stream_id) for viewer in viewers]
    late = (await late_task).streams[stream_id]
    second = await reconnect_task

    tokens = driven.tokens
    assert tokens == REPLY
    assert driven.text == tokens and driven.verified()
    for view in [*watched, late, second.streams[stream_id]]:
        assert view.text == tokens
        assert view.verified()
    status, body = await sync_to_async(http_get_json)(back, f"/api/streams/{stream_id}/", cookie)
    assert (status, body["text"], body["status"]) == (200, tokens, "done")
    message = await Message.objects.aget(stream_id=stream_id)
    assert message.text == tokens
    assert fake_llm.request_count == 1
    for client in [driver, *viewers, second]:
        await client.close()


async def test_a_cancel_sent_to_the_other_process_stops_the_driver(
    start_daphne, test_redis_url, fake_llm
):
    front, back, path, cookie = await two_servers_and_a_conversation(
        start_daphne, test_redis_url, fake_llm
    )
    driver = await WsClient(front, path, cookie).connect()
    other = await WsClient(back, path, cookie).connect()
    stream_id = await driver.prompt("[scenario=endless]")
    await driver.until(lambda f: f["type"] == "token")
    await other.send({"type": "cancel", "stream_id": stream_id})
    driven = await driver.until_final(stream_id, timeout=5)
    assert driven.final["status"] == "cancelled"
    assert driven.text == driven.tokens
    assert await fake_llm.wait_for_async(lambda: fake_llm.disconnects == 1, timeout=5)
    seen = await other.until_final(stream_id, timeout=5)
    assert seen.text == driven.tokens
    await driver.close()
    await other.close()


async def test_the_http_api_refuses_anonymous_and_hides_foreign_streams(
    start_daphne, fake_llm, test_redis_url
):
    server = start_daphne(redis_url=test_redis_url, llm_base_url=fake_llm.base_url)
    conversation, cookie, _ = await conversation_with_session("ann")
    _, bob_cookie, _ = await conversation_with_session("bob")
    client = await WsClient(server, f"/ws/conversations/{conversation.pk}/", cookie).connect()
    stream_id = await client.prompt("hello")
    await client.until_final(stream_id)
    await client.close()
    api = f"/api/streams/{stream_id}/"
    assert (await sync_to_async(http_get_json)(server, api, None))[0] == 403
    assert (await sync_to_async(http_get_json)(server, api, bob_cookie))[0] == 404
    messages = f"/api/conversations/{conversation.pk}/messages/"
    assert (await sync_to_async(http_get_json)(server, messages, bob_cookie))[0] == 404
    status, body = await sync_to_async(http_get_json)(server, messages, cookie)
    assert status == 200
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]


async def test_an_answer_outlives_its_drivers_socket_in_daphne(
    start_daphne, test_redis_url, fake_llm
):
    """daphne cancels a consumer's application instance 5 s (here) after its client
    leaves; the generation must go on for the other viewers regardless."""
    fake_llm.reply = " ".join(f"Word{i}." for i in range(200))
    fake_llm.token_delay = 0.04  # about 8 s: longer than the application close timeout
    front, back, path, cookie = await two_servers_and_a_conversation(
        start_daphne, test_redis_url, fake_llm
    )
    driver = await WsClient(front, path, cookie).connect()
    viewer = await WsClient(back, path, cookie).connect()
    stream_id = await driver.prompt("go")
    await driver.until(lambda f: f["type"] == "token")
    await driver.close()
    seen = await viewer.until_final(stream_id, timeout=40)
    assert seen.final["status"] == "done"
    assert seen.text == fake_llm.reply
    assert seen.verified()
    await viewer.close()
