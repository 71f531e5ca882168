"""The chat's HTTP API: ``GET`` a conversation's messages, ``POST`` a prompt (201, or an
event stream that drives its answer), with its refusals as JSON errors. In process
through Django's test clients, and over daphne with a real HTTP client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

import streaming
from chatproject.chat.models import Message
from streaming import Finish
from streaming.core.lifecycle import Status, text_digest
from streaming.models import Stream
from tests.servers import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)  # the views query on worker threads

FINAL = {"done", "error", "cancelled", "timeout"}
#: A message's fields, as the contract lists them.
CONTRACT_FIELDS = {
    *("id", "role", "text", "reasoning", "stream_id", "status", "last_seq", "client_id"),
    *("finish_reason", "model", "usage"),
}


def api(conversation: Any) -> str:
    return f"/api/conversations/{getattr(conversation, 'pk', conversation)}/messages/"


def sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of each event of a whole event stream; comments and the retry hint
    are left out."""
    events = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and line[0] != ":")
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


async def read_all(response: Any, timeout: float = 15) -> bytes:
    async with asyncio.timeout(timeout):
        return b"".join([part async for part in response.streaming_content])


def joined(events: list[tuple[str, dict[str, Any]]], kind: str, part: str = "text") -> str:
    return "".join(data["text"] for event, data in events if event == kind and data["part"] == part)


@pytest.fixture
async def ann(user):
    client = AsyncClient()
    await client.aforce_login(user)
    return client


@sync_to_async
def row_counts() -> tuple[int, int]:
    return Message.objects.count(), Stream.objects.count()


# --- GET -----------------------------------------------------------------------------------


def test_the_messages_api_lists_messages_in_order_with_persisted_text(
    client, user, conversation, answer
):
    done = answer(conversation, "First", ["Done."], final=Status.DONE)
    live = answer(conversation, "Second", ["Live. "], final=None)
    client.force_login(user)
    messages = client.get(api(conversation)).json()["messages"]
    assert [(m["role"], m["text"], m["status"], m["last_seq"]) for m in messages] == [
        ("user", "First", "done", None),
        ("assistant", "Done.", "done", 0),
        ("user", "Second", "done", None),
        ("assistant", "Live. ", "streaming", 0),
    ]
    assert messages[1]["stream_id"] == str(done.stream_id)
    assert messages[3]["stream_id"] == str(live.stream_id)
    assert messages[0]["stream_id"] is None


def test_each_message_carries_reasoning_client_id_finish_reason_model_and_usage(
    client, user, conversation, answer
):
    usage = {"prompt_tokens": 9, "completion_tokens": 4, "reasoning_tokens": 2}
    answer(
        conversation,
        "Why?",
        [("reasoning", "Hmm. "), ("text", "Because.")],
        final=Status.DONE,
        client_id="tab-1",
        report=Finish("stop", "model-x", usage),
    )
    answer(conversation, "And?", [("reasoning", "Still thinking. ")], final=None)
    client.force_login(user)
    messages = client.get(api(conversation)).json()["messages"]
    assert all(set(m) == CONTRACT_FIELDS for m in messages)
    assert [
        (m["role"], m["text"], m["reasoning"], m["client_id"], m["finish_reason"], m["model"])
        for m in messages
    ] == [
        ("user", "Why?", "", "tab-1", None, None),
        ("assistant", "Because.", "Hmm. ", None, "stop", "model-x"),
        ("user", "And?", "", None, None, None),
        ("assistant", "", "Still thinking. ", None, None, None),
    ]
    assert [m["usage"] for m in messages] == [None, usage, None, None]


def test_the_messages_api_runs_a_constant_number_of_queries(
    client, user, conversation, answer, settings, all_queries
):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 0
    client.force_login(user)

    def count() -> int:
        with all_queries() as statements:
            assert client.get(api(conversation)).status_code == 200
        return len(statements)

    answer(conversation, "one", ["x. "], final=None)
    few = count()
    for n in range(5):
        answer(conversation, f"more {n}", ["y. "], final=Status.DONE if n % 2 else None)
    assert few > 0
    assert count() == few


def test_the_messages_api_refuses_anonymous_and_hides_foreign_ids(
    client, django_user_model, conversation
):
    assert client.get(api(conversation)).status_code == 403
    client.force_login(django_user_model.objects.create_user("bob", password="pw"))
    response = client.get(api(conversation))
    assert (response.status_code, response.json()["error"]["code"]) == (
        404,
        "unknown_conversation",
    )


# --- POST ----------------------------------------------------------------------------------


async def test_a_posted_prompt_answers_201_with_both_messages_and_the_server_answers_it(
    ann, conversation, use_fake_llm
):
    response = await ann.post(api(conversation), {"text": "Hi"}, content_type="application/json")
    assert response.status_code == 201
    question, answer = response.json()["messages"]
    assert (question["role"], question["text"], answer["role"], answer["status"]) == (
        "user",
        "Hi",
        "assistant",
        "streaming",
    )
    # Nobody drives it from here: the server does; any reader follows it to its end.
    events = await ann.get(f"/api/streams/{answer['stream_id']}/events/")
    followed = sse_events(await read_all(events))
    assert followed[-1][1]["status"] == "done"
    assert joined(followed, "chunk") == use_fake_llm.reply
    stored = await Message.objects.aget(pk=answer["id"])
    assert (stored.status, stored.text) == ("done", use_fake_llm.reply)
    assert use_fake_llm.request_count == 1


async def test_a_prompt_posted_for_an_event_stream_gets_messages_tokens_chunks_and_its_status(
    ann, conversation, use_fake_llm
):
    response = await ann.post(
        api(conversation),
        {"text": "Hi", "client_id": "c-1"},
        content_type="application/json",
        headers={"accept": "text/event-stream"},
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert (response["Cache-Control"], response["X-Accel-Buffering"]) == ("no-cache", "no")
    events = sse_events(await read_all(response))
    (_, question), (_, answer) = events[:2]
    assert [event for event, _ in events[:2]] == ["message", "message"]
    assert (question["message"]["role"], question["message"]["client_id"]) == ("user", "c-1")
    assert (question["driving"], answer["message"]["role"], answer["driving"]) == (
        False,
        "assistant",
        True,
    )
    assert {event for event, _ in events[2:]} == {"token", "chunk", "status"}
    stream_id = answer["message"]["stream_id"]
    assert {data["stream_id"] for _, data in events[2:]} == {stream_id}
    final = events[-1][1]
    assert (events[-1][0], final["status"]) == ("status", "done")
    tokens = joined(events, "token")
    assert tokens == joined(events, "chunk") == use_fake_llm.reply
    assert (final["length"], final["sha256"]) == text_digest(tokens)
    assert (await Message.objects.aget(stream_id=stream_id)).text == tokens
    assert use_fake_llm.request_count == 1


async def test_a_client_id_posted_again_gets_the_stored_messages_and_no_llm_call(
    ann, conversation, use_fake_llm
):
    first = await ann.post(
        api(conversation), {"text": "Hi", "client_id": "c-1"}, content_type="application/json"
    )
    again = await ann.post(
        api(conversation), {"text": "Hi!", "client_id": "c-1"}, content_type="application/json"
    )
    assert (first.status_code, again.status_code) == (201, 200)
    ids = [m["id"] for m in first.json()["messages"]]
    assert [m["id"] for m in again.json()["messages"]] == ids
    assert again.json()["messages"][0]["text"] == "Hi"
    assert await row_counts() == (2, 1)
    await asyncio.wait_for(streaming_done(ids[1]), 15)
    assert use_fake_llm.request_count == 1


async def streaming_done(message_id: int) -> None:
    """Follow the answer of ``message_id`` to its end, as a reader of its events."""
    message = await Message.objects.aget(pk=message_id)
    client = AsyncClient()
    await client.aforce_login(await sync_to_async(lambda: message.conversation.owner)())
    await read_all(await client.get(f"/api/streams/{message.stream_id}/events/"))


async def test_a_post_without_its_csrf_token_is_refused_with_403_and_stores_nothing(
    user, conversation
):
    browser = AsyncClient(enforce_csrf_checks=True)
    await browser.aforce_login(user)
    response = await browser.post(
        api(conversation), {"text": "Hi"}, content_type="application/json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"
    assert await row_counts() == (0, 0)


async def test_a_post_with_the_pages_csrf_token_is_accepted(user, conversation):
    browser = AsyncClient(enforce_csrf_checks=True)
    await browser.aforce_login(user)
    await browser.get("/")  # a page sets the CSRF cookie, as a browser would load it
    token = browser.cookies["csrftoken"].value
    response = await browser.post(
        api(conversation),
        {"text": "Hi"},
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 201
    await asyncio.wait_for(streaming_done(response.json()["messages"][1]["id"]), 15)


BAD_BODIES = [
    (b"not json", 400, "invalid_json"),
    (b'{"text": "unterminated', 400, "invalid_json"),
    (b"[" * 5000, 400, "invalid_json"),
    (b'["Hi"]', 400, "invalid_frame"),
    (b'"Hi"', 400, "invalid_frame"),
    (b"{}", 400, "invalid_frame"),
    (b'{"text": 12}', 400, "invalid_frame"),
    (b'{"text": "   "}', 400, "prompt_empty"),
    (b'{"text": "a\\u0000b"}', 400, "invalid_text"),
    (b'{"text": "Hi", "client_id": "not valid"}', 400, "invalid_frame"),
    (json.dumps({"text": "y" * 20_000}).encode(), 413, "frame_too_large"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
async def test_a_bad_body_gets_its_json_error_and_stores_nothing(
    ann, conversation, settings, use_fake_llm, body, status, code
):
    settings.CHAT_FRAME_MAX_BYTES = 10_000
    response = await ann.post(api(conversation), body, content_type="application/json")
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["code"], bool(error["detail"])) == (code, True)
    assert await row_counts() == (0, 0)
    assert use_fake_llm.request_count == 0


async def test_a_body_beyond_djangos_upload_limit_is_also_frame_too_large(
    ann, conversation, settings
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = json.dumps({"text": "y" * 20_000}).encode()
    response = await ann.post(api(conversation), body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "frame_too_large"
    assert await row_counts() == (0, 0)


async def test_an_anonymous_post_is_refused_with_403(conversation):
    response = await AsyncClient().post(
        api(conversation), {"text": "Hi"}, content_type="application/json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "authentication_required"
    assert await row_counts() == (0, 0)


async def test_a_post_to_an_unknown_or_foreign_conversation_is_404(
    ann, django_user_model, conversation
):
    bob = await sync_to_async(django_user_model.objects.create_user)("bob", password="pw")
    bobs = AsyncClient()
    await bobs.aforce_login(bob)
    for client, target in ((ann, 987654), (bobs, conversation)):
        response = await client.post(api(target), {"text": "Hi"}, content_type="application/json")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_conversation"
    assert await row_counts() == (0, 0)


async def test_a_post_over_the_limit_of_active_answers_is_429_and_calls_no_llm(
    ann, user, conversation, settings, use_fake_llm
):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 1
    await sync_to_async(streaming.create_stream)(group="elsewhere", owner=user)
    response = await ann.post(api(conversation), {"text": "Hi"}, content_type="application/json")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "too_many_active"
    assert await row_counts() == (0, 1)
    assert use_fake_llm.request_count == 0


# --- over daphne, with a real HTTP client -----------------------------------------------------


async def daphne_session(start_daphne, fake_llm, user) -> tuple[Any, Any, dict[str, str]]:
    """A server, an aiohttp session and the headers of a logged-in page's POST (the
    session cookie, and the CSRF cookie and header the page got)."""
    import aiohttp

    server = start_daphne(llm_base_url=fake_llm.base_url)
    cookie = await sync_to_async(session_cookie)(user)
    session = aiohttp.ClientSession(base_url=server.http_url)
    async with session.get("/", headers={"Cookie": cookie}) as page:
        assert page.status == 200
        token = page.cookies["csrftoken"].value
    headers = {"Cookie": f"{cookie}; csrftoken={token}", "X-CSRFToken": token}
    return server, session, headers


async def read_events(response: Any, until: Any, timeout: float = 20) -> list[tuple[str, dict]]:
    """Events of a live event stream, as they come, until ``until(event, data)``."""
    events: list[tuple[str, dict]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(timeout):
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if line:
                if line[0] != ":":
                    name, _, value = line.partition(": ")
                    fields[name] = value
                continue
            if "event" in fields:
                events.append((fields["event"], json.loads(fields["data"])))
                if until(*events[-1]):
                    return events
            fields = {}
    raise AssertionError(f"the event stream ended first: {events[-3:]}")


def is_final(event: str, data: dict) -> bool:
    return event == "status" and data["status"] in FINAL


async def test_over_daphne_an_event_stream_prompt_drives_its_answer_to_the_final_status(
    start_daphne, fake_llm, user, conversation
):
    fake_llm.reply = " ".join(f"Sentence {i} is here." for i in range(12))
    _, session, headers = await daphne_session(start_daphne, fake_llm, user)
    async with session:
        async with session.post(
            api(conversation),
            json={"text": "Hi"},
            headers={**headers, "Accept": "text/event-stream"},
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = await read_events(response, is_final)
        (_, question), (_, answer) = events[:2]
        assert (question["driving"], answer["driving"]) == (False, True)
        final = events[-1][1]
        assert final["status"] == "done"
        tokens = joined(events, "token")
        assert tokens == joined(events, "chunk") == fake_llm.reply
        assert (final["length"], final["sha256"]) == text_digest(tokens)
        async with session.get(api(conversation), headers=headers) as listed:
            messages = (await listed.json())["messages"]
        assert [(m["role"], m["status"]) for m in messages] == [
            ("user", "done"),
            ("assistant", "done"),
        ]
        assert messages[1]["text"] == tokens
    assert fake_llm.request_count == 1


async def test_over_daphne_the_answer_goes_on_when_its_http_driver_leaves(
    start_daphne, fake_llm, user, conversation
):
    fake_llm.reply = " ".join(f"Word{i}." for i in range(60))
    fake_llm.token_delay = 0.02
    _, session, headers = await daphne_session(start_daphne, fake_llm, user)
    async with session:
        async with session.post(
            api(conversation),
            json={"text": "Hi"},
            headers={**headers, "Accept": "text/event-stream"},
        ) as response:
            events = await read_events(response, lambda event, _: event == "token")
            stream_id = events[1][1]["message"]["stream_id"]
            response.close()  # the client goes away after its first token
        assert (await Stream.objects.aget(id=stream_id)).status == "streaming"
        async with session.get(f"/api/streams/{stream_id}/events/", headers=headers) as follow:
            followed = await read_events(follow, is_final)
    assert followed[-1][1]["status"] == "done"
    assert "".join(d["text"] for e, d in followed if e in ("snapshot", "chunk")) == fake_llm.reply
    assert fake_llm.disconnects == 0
