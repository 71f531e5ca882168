"""Abuse across users: every surface refuses what is not yours (websocket handshake,
resume and cancel frames, the HTTP API, pages, the admin), and a flood of prompts meets
the per-user limit instead of reaching the LLM.
"""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from chatproject.chat.models import Message
from streaming.models import Stream
from tests.reliability.support import Page, account, ahttp_get, escaped_exceptions, ws_path

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

LIMIT = 2


async def handshake_status(server, path: str, cookie: str | None, origin: str | None = None):
    """The HTTP status a websocket handshake gets (101 when accepted)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    headers = {"Cookie": cookie} if cookie else {}
    try:
        connection = await connect(
            server.ws_url + path,
            origin=origin or server.http_url,
            additional_headers=headers,
            proxy=None,
            open_timeout=10,
        )
    except InvalidStatus as refused:
        return refused.response.status_code
    await connection.close()
    return 101


def token_count(page: Page, stream_id: str) -> int:
    return sum(f["type"] == "token" and f["stream_id"] == stream_id for f in page.frames)


@sync_to_async
def stream_status(stream_id: str) -> str:
    return Stream.objects.get(id=stream_id).status


async def test_every_surface_refuses_another_users_conversation_and_streams(
    start_daphne, fake_llm, report
):
    server = start_daphne(llm_base_url=fake_llm.base_url)
    ann, bob = await account("ann"), await account("bob")
    conversation = ann.conversations[0].pk
    page = await Page(server, ann.path, ann.cookie, idle=None).connect()
    done = await page.prompt("Hello.")
    await page.until_final(done)
    live = await page.prompt("[scenario=endless]")
    await page.until(lambda f: f["type"] == "token" and f["stream_id"] == live)

    handshakes = {
        "bob on ann's conversation": await handshake_status(server, ann.path, bob.cookie),
        "anonymous on ann's conversation": await handshake_status(server, ann.path, None),
        "ann from a foreign Origin": await handshake_status(
            server, ann.path, ann.cookie, origin="http://evil.example"
        ),
        "ann on a conversation that does not exist": await handshake_status(
            server, "/ws/conversations/987654/", ann.cookie
        ),
        "ann on her own conversation": await handshake_status(server, ann.path, ann.cookie),
    }

    intruder = await Page(server, bob.path, bob.cookie, idle=None).connect()
    frames = {}
    for name, frame in [
        ("resume ann's finished stream", {"type": "resume", "stream_id": done, "after": -1}),
        ("resume ann's live stream", {"type": "resume", "stream_id": live, "after": 0}),
        ("resume, id in capitals", {"type": "resume", "stream_id": live.upper(), "after": -1}),
        ("cancel ann's live stream", {"type": "cancel", "stream_id": live}),
    ]:
        await intruder.send(frame)
        answer = await intruder.until(lambda f: True, timeout=10)
        frames[name] = answer.get("code", answer["type"])
    # Tokens the driver sends after bob's cancel was answered: one that had reached it
    # would have stopped them, and ended the stream.
    seen = token_count(page, live)
    try:
        await page.until(lambda f: token_count(page, live) >= seen + 20, timeout=10)
        tokens_flow = True
    except TimeoutError:
        tokens_flow = False
    still = await stream_status(live)

    http = {}
    for name, path, cookie in [
        ("stream API, anonymous", f"/api/streams/{done}/", None),
        ("stream API, bob", f"/api/streams/{done}/", bob.cookie),
        ("stream API after=0, bob", f"/api/streams/{live}/?after=0", bob.cookie),
        ("stream API, ann", f"/api/streams/{done}/", ann.cookie),
        ("messages API, anonymous", f"/api/conversations/{conversation}/messages/", None),
        ("messages API, bob", f"/api/conversations/{conversation}/messages/", bob.cookie),
        ("messages API, ann", f"/api/conversations/{conversation}/messages/", ann.cookie),
        ("conversation page, anonymous", f"/conversations/{conversation}/", None),
        ("conversation page, bob", f"/conversations/{conversation}/", bob.cookie),
        ("conversation page, ann", f"/conversations/{conversation}/", ann.cookie),
        ("home page, anonymous", "/", None),
        ("admin, anonymous", "/admin/", None),
        ("admin, bob (not staff)", "/admin/", bob.cookie),
        ("admin streams, bob (not staff)", "/admin/streaming/stream/", bob.cookie),
        ("admin conversations, bob", "/admin/chat/conversation/", bob.cookie),
    ]:
        answer = await ahttp_get(server, path, cookie)
        http[name] = (answer.status, answer.location.split("?")[0] if answer.location else "")

    await page.send({"type": "cancel", "stream_id": live})
    await page.until_final(live)
    for client in (page, intruder):
        await client.close()

    report("tried", "handshakes, resume/cancel of ann's streams from bob's socket, HTTP")
    report("measured", f"handshakes: {handshakes}")
    report("measured", f"bob's frames: {frames}; ann's live stream afterwards: {still}")
    report("measured", f"HTTP: {http}")

    assert handshakes == {
        "bob on ann's conversation": 403,
        "anonymous on ann's conversation": 403,
        "ann from a foreign Origin": 403,
        "ann on a conversation that does not exist": 403,
        "ann on her own conversation": 101,
    }
    assert set(frames.values()) == {"unknown_stream"}, frames
    assert still == "streaming" and tokens_flow, "bob's cancel reached ann's stream"
    login, admin_login = "/accounts/login/", "/admin/login/"
    assert http == {
        "stream API, anonymous": (403, ""),
        "stream API, bob": (404, ""),
        "stream API after=0, bob": (404, ""),
        "stream API, ann": (200, ""),
        "messages API, anonymous": (403, ""),
        "messages API, bob": (404, ""),
        "messages API, ann": (200, ""),
        "conversation page, anonymous": (302, login),
        "conversation page, bob": (404, ""),
        "conversation page, ann": (200, ""),
        "home page, anonymous": (302, login),
        "admin, anonymous": (302, admin_login),
        "admin, bob (not staff)": (302, admin_login),
        "admin streams, bob (not staff)": (302, admin_login),
        "admin conversations, bob": (302, admin_login),
    }
    assert escaped_exceptions(server) == []
    report("held", "every foreign or anonymous access refused; ann's own access works")


async def test_a_flood_of_prompts_meets_the_per_user_limit_not_the_llm(
    start_daphne, fake_llm, report
):
    server = start_daphne(llm_base_url=fake_llm.base_url, STREAMING_MAX_ACTIVE_PER_OWNER=LIMIT)
    carol = await account("carol", conversations=2)
    pages = [
        await Page(server, ws_path(c), carol.cookie, idle=None).connect()
        for c in carol.conversations
    ]
    per_socket = 6
    for page in pages:
        for i in range(per_socket):
            await page.send({"type": "prompt", "text": f"[scenario=endless] flood {i}"})

    accepted: list[str] = []
    refused: list[str] = []
    for page in pages:
        for _ in range(per_socket):
            answer = await page.until(
                lambda f: (f["type"] == "message" and f["driving"]) or f["type"] == "error",
                timeout=15,
            )
            if answer["type"] == "message":
                accepted.append(answer["message"]["stream_id"])
            else:
                refused.append(answer["code"])
    # Every accepted answer's first token: its LLM request was made (and answered) after
    # each refusal above was sent, so a refused prompt's request would be counted too.
    for stream_id in accepted:
        owner = next(p for p in pages if stream_id in p.views)
        if not token_count(owner, stream_id):
            await owner.until(lambda f, s=stream_id: f["type"] == "token" and f["stream_id"] == s)
    llm_calls = fake_llm.request_count
    rows = await sync_to_async(
        lambda: (
            Stream.objects.filter(owner=carol.user).count(),
            Message.objects.filter(conversation__owner=carol.user).count(),
        )
    )()

    for stream_id in accepted:
        owner = next(p for p in pages if stream_id in p.views)
        await owner.send({"type": "cancel", "stream_id": stream_id})
        await owner.until_final(stream_id)
    again = await pages[0].prompt("[scenario=endless] after the flood")
    await pages[0].until(lambda f: f["type"] == "token" and f["stream_id"] == again)
    calls_after = fake_llm.request_count
    await pages[0].send({"type": "cancel", "stream_id": again})
    await pages[0].until_final(again)
    for page in pages:
        await page.close()

    report(
        "tried",
        f"{per_socket * len(pages)} prompts in a burst over {len(pages)} sockets "
        f"(two conversations of one user), STREAMING_MAX_ACTIVE_PER_OWNER={LIMIT}",
    )
    report(
        "measured",
        f"accepted {len(accepted)}, refused {len(refused)} ({set(refused)}); LLM requests "
        f"{llm_calls}; streams stored {rows[0]}, messages {rows[1]}; after cancelling "
        f"them one more prompt was accepted and the LLM had {calls_after} requests",
    )
    assert len(accepted) == LIMIT
    assert refused == ["too_many_active"] * (per_socket * len(pages) - LIMIT)
    assert llm_calls == LIMIT
    assert rows == (LIMIT, 2 * LIMIT)
    assert calls_after == LIMIT + 1
    report(
        "held",
        "the LLM saw exactly the limit; every other prompt got too_many_active and "
        "stored nothing; the limit frees as answers end",
    )
