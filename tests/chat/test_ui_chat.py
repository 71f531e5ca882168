"""The chat for AI SDK clients: POST /api/ui-chat, GET /api/ui-chat/<id>/stream and the
ws/ui-chat/ socket; in process (Django's AsyncClient, Channels' WebsocketCommunicator),
then the real SDK (npm ``ai`` through tests/aisdk/client.mjs) against real daphne."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import AsyncClient

from chatproject.asgi import application
from chatproject.chat.models import Conversation, Message
from chatproject.chat.services import conversation_prompt
from streaming.models import Chunk, Stream
from tests.fixtures import require
from tests.servers import DaphneServer, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

FINAL = {"done", "error", "cancelled", "timeout"}


# --- helpers ----------------------------------------------------------------------------


@sync_to_async
def make_user(name: str = "ann"):
    return get_user_model().objects.create_user(name, password="pw")


@sync_to_async
def make_conversation(owner) -> Conversation:
    return Conversation.objects.create(owner=owner)


def logged_in(user, *, csrf: bool = False) -> AsyncClient:
    client = AsyncClient(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


@pytest.fixture
async def ann():
    return await make_user("ann")


@pytest.fixture
async def conversation(ann):
    return await make_conversation(ann)


@pytest.fixture
async def client(ann):
    return await sync_to_async(logged_in)(ann)


@pytest.fixture
def llm(settings, fake_llm):
    """The fake OpenAI-compatible server as the LLM (it records every request)."""
    settings.LLM_PROVIDER = "openai"
    settings.LLM_BASE_URL = fake_llm.base_url
    settings.LLM_API_KEY = "test"
    return fake_llm


def user_message(*texts: str, message_id: str = "u1") -> dict[str, Any]:
    return {"id": message_id, "role": "user", "parts": [{"type": "text", "text": t} for t in texts]}


def turn(conversation, *texts: str, trigger: str = "submit-message", **extra: Any) -> dict:
    """The body DefaultChatTransport posts."""
    messages = [user_message(*texts)] if texts else []
    return {"id": str(conversation.pk), "messages": messages, "trigger": trigger, **extra}


async def post(client: AsyncClient, body: Any, **headers: str):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return await client.post(
        "/api/ui-chat", data=data, content_type="application/json", headers=headers
    )


async def chunks_of(response) -> list[Any]:
    """The UI message chunks of a streamed response, then "[DONE]"."""
    body = b"".join([part async for part in response.streaming_content]).decode()
    out: list[Any] = []
    for event in body.split("\n\n")[:-1]:
        if not event.startswith(":"):
            data = event.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def parts(chunks: list[Any]) -> list[tuple[str, str]]:
    """The parts the SDK assembles from these chunks (type, text), in order."""
    out: list[list[str]] = []
    for chunk in chunks:
        kind = chunk["type"] if isinstance(chunk, dict) else ""
        if kind.endswith("-start") and kind != "start":
            out.append([kind.removesuffix("-start"), ""])
        elif kind.endswith("-delta"):
            out[-1][1] += chunk["delta"]
    return [(kind, text) for kind, text in out]


async def counts() -> tuple[int, int]:
    return await Message.objects.acount(), await Stream.objects.acount()


async def answer_of(stream_id: str) -> Message:
    return await Message.objects.select_related("stream").aget(stream_id=stream_id)


async def until_final(stream_id: str, timeout: float = 15) -> Stream:
    """The stream once it is final (its driver runs in the background)."""
    async with asyncio.timeout(timeout):
        while True:
            stream = await Stream.objects.aget(id=stream_id)
            if stream.status in FINAL:
                return stream
            await asyncio.sleep(0.02)


def exchange(conversation, question: str, answer: str) -> tuple[Message, Message]:
    """A question and its final answer, as if streamed before."""
    prompt = conversation_prompt(conversation=conversation, text=question)
    Message.objects.filter(pk=prompt.answer.pk).update(text=answer, status="done")
    Stream.objects.filter(pk=prompt.answer.stream_id).update(status="done", text=answer)
    prompt.answer.refresh_from_db()
    return prompt.question, prompt.answer


earlier_exchange = sync_to_async(exchange)


# --- POST /api/ui-chat -------------------------------------------------------------------


async def test_a_turn_is_answered_by_a_ui_message_stream_that_drives_the_answer(
    client, conversation
):
    response = await post(client, turn(conversation, "Hello"))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["x-vercel-ai-ui-message-stream"] == "v1"
    assert (response["Cache-Control"], response["X-Accel-Buffering"]) == ("no-cache", "no")
    chunks = await chunks_of(response)
    start, finish = chunks[0], chunks[-2]
    answer = await answer_of(start["messageMetadata"]["stream_id"])
    assert start == {
        "type": "start",
        "messageId": str(answer.pk),
        "messageMetadata": {"stream_id": str(answer.stream_id)},
    }
    assert parts(chunks) == [("reasoning", answer.reasoning), ("text", answer.text)]
    assert finish["type"] == "finish" and chunks[-1] == "[DONE]"
    assert finish["messageMetadata"] == {
        "finish_reason": "stop",
        "model": answer.model,
        "usage": answer.usage,
    }


async def test_the_prompt_is_the_last_user_messages_text_and_the_context_the_servers_history(
    client, conversation, llm
):
    await earlier_exchange(conversation, "Server question", "Server answer")
    body = turn(conversation, "First part.", "Second part.")
    body["messages"][:0] = [user_message("Client-side history", message_id="u0")]
    await chunks_of(await post(client, body))
    assert llm.request_count == 1
    sent = [(m["role"], m["content"]) for m in llm.requests[0]["messages"]]
    assert sent[1:] == [
        ("user", "Server question"),
        ("assistant", "Server answer"),
        ("user", "First part.\n\nSecond part."),
    ]
    question = await Message.objects.filter(role="user").alast()
    assert question.text == "First part.\n\nSecond part."


async def test_a_client_that_goes_away_leaves_the_answer_running(client, conversation, llm):
    llm.token_delay = 0.02
    response = await post(client, turn(conversation, "Hello"))
    content = response.streaming_content
    start = json.loads((await anext(content)).decode().removeprefix("data: "))
    await content.aclose()
    stream = await until_final(start["messageMetadata"]["stream_id"])
    assert (stream.status, stream.text) == ("done", llm.reply)


async def test_a_regenerate_answers_the_last_question_again_and_replaces_its_answer(
    client, conversation
):
    question, old = await earlier_exchange(conversation, "Again?", "First answer")
    chunks = await chunks_of(await post(client, turn(conversation, trigger="regenerate-message")))
    new = await answer_of(chunks[0]["messageMetadata"]["stream_id"])
    await old.arefresh_from_db()
    assert (new.prompt_id, new.status, old.replaced_by_id, old.prompt_id) == (
        question.pk,
        "done",
        new.pk,
        None,
    )
    assert await Message.objects.filter(role="user").acount() == 1


async def test_a_regenerated_answers_context_leaves_the_replaced_answer_out(
    client, conversation, llm
):
    await earlier_exchange(conversation, "Again?", "First answer")
    await chunks_of(await post(client, turn(conversation, trigger="regenerate-message")))
    sent = [(m["role"], m["content"]) for m in llm.requests[0]["messages"]]
    assert sent[1:] == [("user", "Again?")]


async def test_a_regenerate_stops_the_answer_it_replaces_while_that_one_streams(
    client, conversation, llm
):
    llm.token_delay = 0.05
    response = await post(client, turn(conversation, "Slowly"))
    first = json.loads((await anext(response.streaming_content)).decode().removeprefix("data: "))
    await response.streaming_content.aclose()
    await chunks_of(await post(client, turn(conversation, trigger="regenerate-message")))
    replaced = await until_final(first["messageMetadata"]["stream_id"])
    assert replaced.status == "cancelled"


def test_the_page_shows_a_replaced_answer_as_replaced(django_user_model):
    from django.test import Client

    user = django_user_model.objects.create_user("bob", password="pw")
    conversation = Conversation.objects.create(owner=user)
    _, old = exchange(conversation, "Question", "First answer")
    new = Message.objects.create(
        conversation=conversation, role="assistant", text="Second answer", status="done"
    )
    Message.objects.filter(pk=old.pk).update(replaced_by=new)
    browser = Client()
    browser.force_login(user)
    page = browser.get(f"/conversations/{conversation.pk}/").content.decode()
    old_at = page.rindex("<li", 0, page.index(f'id="message-{old.pk}"'))
    new_at = page.rindex("<li", 0, page.index(f'id="message-{new.pk}"'))
    assert "message-replaced" in page[old_at:new_at]
    assert "Replaced by a newer answer" in page[old_at:new_at]
    assert "Replaced by" not in page[new_at:] and "message-replaced" not in page[new_at:]


# --- refusals: nothing stored ---------------------------------------------------------------


async def assert_refused(response, status: int, code: str, before: tuple[int, int]) -> None:
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["detail"]
    assert await counts() == before


async def test_a_body_that_is_not_json_is_refused_and_nothing_is_stored(client, conversation):
    before = await counts()
    await assert_refused(await post(client, "{not json"), 400, "invalid_json", before)


def drop(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def with_message(body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return body | {"messages": [body["messages"][0] | fields]}


@pytest.mark.parametrize(
    "change",
    [
        lambda body: [body],
        lambda body: drop(body, "trigger"),
        lambda body: body | {"trigger": "submit-user-message"},
        lambda body: body | {"messages": {"0": body["messages"][0]}},
        lambda body: body | {"messages": [*body["messages"], "Hello"]},
        lambda body: body | {"messages": [drop(body["messages"][0], "role")]},
        lambda body: with_message(body, role=["user"]),
        lambda body: with_message(body, parts="Hello"),
        lambda body: with_message(body, parts=[{"text": "no type"}]),
        lambda body: with_message(body, parts=[{"type": "text", "text": ["Hello"]}]),
        lambda body: body | {"messageId": 7},
        lambda body: body | {"id": True},
        lambda body: drop(body, "id"),
    ],
    ids=[
        "an array",
        "no trigger",
        "an unknown trigger",
        "messages not a list",
        "a message not an object",
        "a message without a role",
        "a role not a string",
        "parts not a list",
        "a part without a type",
        "a text part without a string",
        "a messageId not a string",
        "an id not a string",
        "no id",
    ],
)
async def test_a_body_not_of_the_sdks_shape_is_refused_and_nothing_is_stored(
    client, conversation, change
):
    body = change(turn(conversation, "Hello"))
    before = await counts()
    await assert_refused(await post(client, body), 400, "invalid_frame", before)


@pytest.mark.parametrize(
    "messages",
    [[], [{"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "Hi"}]}]],
    ids=["no messages", "only an assistant message"],
)
async def test_a_turn_without_a_user_message_is_refused_and_nothing_is_stored(
    client, conversation, messages
):
    body = turn(conversation) | {"messages": messages}
    before = await counts()
    await assert_refused(await post(client, body), 400, "no_user_message", before)


@pytest.mark.parametrize(
    ("texts", "code"),
    [
        ((), "prompt_empty"),
        (("  ", "\n"), "prompt_empty"),
        (("x" * 32001,), "prompt_too_long"),
        (("A\x00B",), "invalid_text"),
    ],
    ids=["no text part", "blank text", "too long", "a NUL"],
)
async def test_a_text_that_the_prompt_rules_refuse_is_refused_and_nothing_is_stored(
    client, conversation, texts, code
):
    body = turn(conversation) | {"messages": [user_message(*texts)]}
    if not texts:
        body["messages"][0]["parts"] = [{"type": "file", "url": "data:,x", "mediaType": "a/b"}]
    before = await counts()
    await assert_refused(await post(client, body), 400, code, before)


async def test_an_unknown_or_foreign_conversation_is_404_and_nothing_is_stored(
    client, conversation
):
    foreign = await make_conversation(await make_user("bob"))
    before = await counts()
    for chat_id in (str(foreign.pk), "999999", "not-a-number", 42424242):
        body = turn(conversation, "Hello") | {"id": chat_id}
        await assert_refused(await post(client, body), 404, "unknown_conversation", before)


async def test_an_anonymous_turn_is_403(conversation):
    before = await counts()
    response = await post(AsyncClient(), turn(conversation, "Hello"))
    await assert_refused(response, 403, "authentication_required", before)


async def test_a_turn_without_the_csrf_token_is_refused_and_nothing_is_stored(ann, conversation):
    client = await sync_to_async(logged_in)(ann, csrf=True)
    before = await counts()
    await assert_refused(
        await post(client, turn(conversation, "Hello")), 403, "csrf_failed", before
    )


async def test_a_turn_with_the_csrf_token_of_the_session_is_accepted(ann, conversation):
    client = await sync_to_async(logged_in)(ann, csrf=True)
    token = "a" * 32
    client.cookies["csrftoken"] = token
    response = await post(client, turn(conversation, "Hello"), **{"X-CSRFToken": token})
    assert response.status_code == 200
    assert (await chunks_of(response))[-1] == "[DONE]"


async def test_too_many_active_answers_is_429_and_nothing_is_stored(client, conversation, settings):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 1
    await sync_to_async(conversation_prompt)(conversation=conversation, text="Still streaming")
    before = await counts()
    response = await post(client, turn(conversation, "Hello"))
    await assert_refused(response, 429, "too_many_active", before)


async def test_a_regenerate_in_a_conversation_without_a_question_is_refused(client, conversation):
    before = await counts()
    response = await post(client, turn(conversation, trigger="regenerate-message"))
    await assert_refused(response, 400, "no_user_message", before)


async def test_a_body_over_the_size_limit_is_refused_and_nothing_is_stored(
    client, conversation, settings
):
    settings.CHAT_UI_BODY_MAX_BYTES = 1000
    before = await counts()
    response = await post(client, turn(conversation, "x" * 1000))
    await assert_refused(response, 413, "frame_too_large", before)


# --- GET /api/ui-chat/<id>/stream ------------------------------------------------------------


async def test_a_conversation_without_an_answer_streaming_has_no_stream_to_resume(
    client, conversation
):
    assert (await client.get(f"/api/ui-chat/{conversation.pk}/stream")).status_code == 204
    await earlier_exchange(conversation, "Done?", "Done.")
    assert (await client.get(f"/api/ui-chat/{conversation.pk}/stream")).status_code == 204


async def test_the_stream_route_refuses_anonymous_and_foreign_conversations(conversation):
    path = f"/api/ui-chat/{conversation.pk}/stream"
    assert (await AsyncClient().get(path)).status_code == 403
    stranger = await sync_to_async(logged_in)(await make_user("bob"))
    response = await stranger.get(path)
    assert (response.status_code, response.json()["error"]["code"]) == (
        404,
        "unknown_conversation",
    )
    assert (await stranger.get("/api/ui-chat/abc/stream")).status_code == 404


async def test_the_stream_of_an_answer_streaming_replays_it_from_its_start_to_its_end(
    client, conversation, llm
):
    llm.token_delay = 0.02
    response = await post(client, turn(conversation, "Hello"))
    first = json.loads((await anext(response.streaming_content)).decode().removeprefix("data: "))
    await response.streaming_content.aclose()
    replay = await client.get(f"/api/ui-chat/{conversation.pk}/stream")
    chunks = await chunks_of(replay)
    stream = await until_final(first["messageMetadata"]["stream_id"])
    assert chunks[0] == first
    assert parts(chunks) == [("text", stream.text)] and stream.text == llm.reply


# --- ws/conversations/<id>/: the pages see it too ----------------------------------------------


async def open_socket(path: str, user) -> WebsocketCommunicator:
    cookie = await sync_to_async(session_cookie)(user)
    headers = [
        (b"origin", b"http://localhost"),
        (b"host", b"localhost"),
        (b"cookie", cookie.encode()),
    ]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def test_a_conversation_socket_sees_the_messages_and_chunks_of_a_ui_chat_answer(
    ann, client, conversation
):
    page = await open_socket(f"/ws/conversations/{conversation.pk}/", ann)
    try:
        chunks = await chunks_of(await post(client, turn(conversation, "Hello")))
        stream_id = chunks[0]["messageMetadata"]["stream_id"]
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(15):
            while not (frames and frames[-1]["type"] == "status" and frames[-1]["status"] in FINAL):
                frames.append(await page.receive_json_from(timeout=15))
    finally:
        await page.disconnect()
    messages = [f["message"] for f in frames if f["type"] == "message"]
    assert [(m["role"], m["stream_id"]) for m in messages] == [
        ("user", None),
        ("assistant", stream_id),
    ]
    answer = await answer_of(stream_id)
    seen = [f for f in frames if f["type"] == "chunk"]
    assert [f["seq"] for f in seen] == list(range(len(seen)))
    assert "".join(f["text"] for f in seen if f["part"] == "text") == answer.text


# --- ws/ui-chat/: WebSocketChatTransport ----------------------------------------------------


def send_frame(conversation, request_id: str, *texts: str, **extra: Any) -> dict[str, Any]:
    """A `send` frame as the transport writes it."""
    body = turn(conversation, *texts, **extra)
    return {"type": "send", "requestId": request_id, **body, "headers": {}, "body": {}}


async def replies(socket: WebsocketCommunicator, *request_ids: str) -> dict[str, list[dict]]:
    """Every server frame of these requests until each has ended (end, error, no-active)."""
    out: dict[str, list[dict]] = {r: [] for r in request_ids}
    open_ = set(request_ids)
    async with asyncio.timeout(15):
        while open_:
            frame = await socket.receive_json_from(timeout=15)
            out[frame["requestId"]].append(frame)
            if frame["type"] in ("end", "error", "no-active"):
                open_.discard(frame["requestId"])
    return out


@pytest.fixture
async def ui_socket(ann):
    socket = await open_socket("/ws/ui-chat/", ann)
    yield socket
    await socket.disconnect()


async def test_an_anonymous_ui_chat_socket_is_refused():
    communicator = WebsocketCommunicator(
        application,
        "/ws/ui-chat/",
        headers=[(b"origin", b"http://localhost"), (b"host", b"localhost")],
    )
    connected, _ = await communicator.connect()
    assert not connected


async def test_a_ui_chat_socket_from_a_foreign_origin_is_refused(ann):
    cookie = await sync_to_async(session_cookie)(ann)
    headers = [(b"origin", b"http://evil.example"), (b"host", b"localhost")]
    communicator = WebsocketCommunicator(
        application, "/ws/ui-chat/", headers=[*headers, (b"cookie", cookie.encode())]
    )
    connected, _ = await communicator.connect()
    assert not connected


async def test_requests_multiplexed_on_one_socket_are_each_numbered_from_zero_and_ended(
    ann, ui_socket, conversation
):
    other = await make_conversation(ann)
    await ui_socket.send_json_to(send_frame(conversation, "r1", "One"))
    await ui_socket.send_json_to(send_frame(other, "r2", "Two"))
    frames = await replies(ui_socket, "r1", "r2")
    for request_id in ("r1", "r2"):
        chunks = frames[request_id]
        assert chunks[-1] == {"type": "end", "requestId": request_id}
        assert [f["sequence"] for f in chunks[:-1]] == list(range(len(chunks) - 1))
        answer = await answer_of(chunks[0]["chunk"]["messageMetadata"]["stream_id"])
        ui = [f["chunk"] for f in chunks[:-1]]
        assert ui[0]["messageId"] == str(answer.pk)
        assert parts(ui) == [("reasoning", answer.reasoning), ("text", answer.text)]
        assert ui[-1]["type"] == "finish"


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda frame: frame | {"messages": "Hello"}, "messages must be a list"),
        (lambda frame: frame | {"messages": []}, "no user message"),
        (lambda frame: with_message(frame, parts=[{"type": "text", "text": " "}]), "empty"),
        (lambda frame: frame | {"id": "999999"}, "No such conversation"),
        (lambda frame: frame | {"trigger": "regenerate-message"}, "no question"),
    ],
    ids=["bad shape", "no user message", "blank text", "unknown conversation", "no question"],
)
async def test_a_refused_send_is_an_error_of_that_request_and_stores_nothing(
    ui_socket, conversation, change, detail
):
    before = await counts()
    await ui_socket.send_json_to(change(send_frame(conversation, "r1", "Hello")))
    (frame,) = (await replies(ui_socket, "r1"))["r1"]
    assert frame["type"] == "error" and detail in frame["errorText"]
    assert await counts() == before


@pytest.mark.parametrize(
    "raw",
    ["{not json", json.dumps({"type": "send"}), json.dumps({"type": "ping", "requestId": ""})],
    ids=["not JSON", "no requestId", "an empty requestId"],
)
async def test_a_frame_of_no_request_gets_an_error_with_an_empty_request_id(ui_socket, raw):
    await ui_socket.send_to(text_data=raw)
    frame = await ui_socket.receive_json_from(timeout=5)
    assert (frame["type"], frame["requestId"]) == ("error", "")


async def test_an_unknown_frame_type_is_an_error_of_its_request(ui_socket):
    await ui_socket.send_json_to({"type": "ping", "requestId": "r1"})
    (frame,) = (await replies(ui_socket, "r1"))["r1"]
    assert frame["type"] == "error" and "ping" in frame["errorText"]


async def test_a_resume_of_a_conversation_without_an_answer_streaming_is_no_active(
    ui_socket, conversation
):
    await earlier_exchange(conversation, "Done?", "Done.")
    await ui_socket.send_json_to({"type": "resume", "requestId": "r1", "id": str(conversation.pk)})
    assert (await replies(ui_socket, "r1"))["r1"] == [{"type": "no-active", "requestId": "r1"}]


async def test_a_resume_with_a_bad_last_sequence_is_an_error(ui_socket, conversation):
    resume = {"type": "resume", "requestId": "r1", "id": str(conversation.pk), "lastSequence": -1}
    await ui_socket.send_json_to(resume)
    (frame,) = (await replies(ui_socket, "r1"))["r1"]
    assert frame["type"] == "error" and "lastSequence" in frame["errorText"]


async def test_an_abort_of_an_unknown_request_is_ignored(ui_socket, conversation):
    await ui_socket.send_json_to({"type": "abort", "requestId": "gone"})
    await ui_socket.send_json_to(send_frame(conversation, "r1", "Hello"))
    frames = (await replies(ui_socket, "r1"))["r1"]
    assert frames[-1]["type"] == "end"


async def test_an_abort_stops_the_answer_as_a_cancel_does(ui_socket, conversation, llm):
    llm.token_delay = 0.05
    await ui_socket.send_json_to(send_frame(conversation, "r1", "Hello"))
    start = await ui_socket.receive_json_from(timeout=5)
    await ui_socket.send_json_to({"type": "abort", "requestId": "r1"})
    stream = await until_final(start["chunk"]["messageMetadata"]["stream_id"])
    assert stream.status == "cancelled"


async def test_a_socket_that_closes_leaves_its_answers_running(ann, conversation, llm):
    llm.token_delay = 0.02
    socket = await open_socket("/ws/ui-chat/", ann)
    await socket.send_json_to(send_frame(conversation, "r1", "Hello"))
    start = await socket.receive_json_from(timeout=5)
    await socket.disconnect()
    stream = await until_final(start["chunk"]["messageMetadata"]["stream_id"])
    assert (stream.status, stream.text) == ("done", llm.reply)


# --- the real SDK against daphne ------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
CSRF = "csrf0123456789abcdefghijklmnopqr"  # the csrftoken cookie's secret, as a browser keeps it
#: A reply long enough (60 tokens at token_delay) to leave and come back in the middle.
LONG_REPLY = " ".join(f"Word{i}." for i in range(60))


class Sdk:
    """tests/aisdk/client.mjs (the SDK's transports) as ann, against one daphne server."""

    def __init__(self, node: str, server: DaphneServer, user: Any) -> None:
        self.node, self.server = node, server
        self.cookie = f"{session_cookie(user)}; csrftoken={CSRF}"

    def args(self, mode: str, conversation: Conversation, *options: str) -> list[str]:
        return [
            self.node,
            str(ROOT / "tests" / "aisdk" / "client.mjs"),
            mode,
            *("--url", self.server.http_url, "--chat", str(conversation.pk)),
            *("--cookie", self.cookie, "--csrf", CSRF, *options),
        ]

    def start(self, mode: str, conversation: Conversation, *options: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.args(mode, conversation, *options), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def wait(self, process: subprocess.Popen) -> list[dict[str, Any]]:
        """The JSON lines the client printed; it must have succeeded."""
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, f"{err.decode()}{out.decode()}\n{self.server.log()}"
        return [json.loads(line) for line in out.decode().splitlines()]

    def run(self, mode: str, conversation: Conversation, *options: str) -> list[dict[str, Any]]:
        return self.wait(self.start(mode, conversation, *options))


@pytest.fixture
def sdk(django_user_model, start_daphne, fake_llm) -> Sdk:
    node = shutil.which("node")
    require(node is not None, "node is not installed (Node 20+ runs the AI SDK harness)")
    require((ROOT / "node_modules" / "ai").is_dir(), "node_modules is missing: run `npm ci`")
    user = django_user_model.objects.create_user("ann", password="pw")
    assert node is not None
    return Sdk(node, start_daphne(llm_base_url=fake_llm.base_url), user)


@pytest.fixture
def chat(sdk) -> Conversation:
    return Conversation.objects.create(owner=get_user_model().objects.get(username="ann"))


def wait_until(condition: Callable[[], Any], timeout: float = 20) -> Any:
    """``condition()`` once it is truthy (the server works in other processes)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def final_stream(stream_id: str) -> Stream:
    return wait_until(lambda: Stream.objects.filter(id=stream_id, status__in=FINAL).first())


def assembled(lines: list[dict[str, Any]]) -> tuple[dict[str, Any], Stream]:
    """The UIMessage the SDK assembled, and the answer's persisted stream."""
    assert not [line for line in lines if "error" in line], lines
    message = lines[-1]["message"]
    return message, final_stream(message["metadata"]["stream_id"])


def parts_of(message: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(p["type"], p["text"], p["state"]) for p in message["parts"]]


def test_the_sdk_assembles_a_thinking_answer_into_one_reasoning_and_one_text_part(
    sdk, chat, fake_llm
):
    lines = sdk.run("send", chat, "--prompt", "Hello [scenario=reasoning_content]")
    message, stream = assembled(lines)
    assert stream.reasoning and stream.status == "done"
    assert parts_of(message) == [
        ("reasoning", stream.reasoning, "done"),
        ("text", stream.text, "done"),
    ]
    assert message["id"] == str(Message.objects.get(stream=stream).pk)
    assert message["metadata"] == {
        "stream_id": str(stream.id),
        "finish_reason": "stop",
        "model": stream.model,
        "usage": stream.usage,
    }
    assert fake_llm.request_count == 1


def test_the_sdk_resumes_the_whole_answer_of_a_client_that_left_in_the_middle(sdk, chat, fake_llm):
    fake_llm.reply, fake_llm.token_delay = LONG_REPLY, 0.05
    left = sdk.run("send-then-leave", chat, "--chunks", "3")
    assert left[-1] == {"left": True}
    resumed = sdk.run("resume", chat)
    message, stream = assembled(resumed)
    assert parts_of(message) == [("text", LONG_REPLY, "done")]
    assert (stream.status, stream.text) == ("done", LONG_REPLY)
    assert message["id"] == left[0]["chunk"]["messageId"]
    assert fake_llm.request_count == 1


def test_the_sdk_finds_no_stream_to_resume_in_an_idle_conversation(sdk, chat):
    assert sdk.run("resume", chat) == [{"stream": None}]


def test_the_websocket_transport_sends_a_turn_and_assembles_its_answer(sdk, chat, fake_llm):
    lines = sdk.run("ws-send", chat, "--prompt", "Hello [scenario=reasoning_content]")
    message, stream = assembled(lines)
    assert parts_of(message) == [
        ("reasoning", stream.reasoning, "done"),
        ("text", stream.text, "done"),
    ]
    assert message["metadata"]["usage"] == stream.usage
    assert fake_llm.request_count == 1


def test_the_websocket_transport_resumes_an_answer_streaming_whole(sdk, chat, fake_llm):
    fake_llm.reply, fake_llm.token_delay = LONG_REPLY, 0.05
    sending = sdk.start("ws-send", chat)
    wait_until(lambda: Chunk.objects.filter(stream__message__conversation=chat).exists())
    message, stream = assembled(sdk.run("ws-resume", chat))
    sdk.wait(sending)
    assert parts_of(message) == [("text", LONG_REPLY, "done")]
    assert stream.text == LONG_REPLY and fake_llm.request_count == 1


def test_a_websocket_resume_after_a_last_sequence_continues_exactly_after_it(sdk, chat, fake_llm):
    fake_llm.reply, fake_llm.token_delay = LONG_REPLY, 0.05
    sending = sdk.start("ws-send", chat)
    wait_until(lambda: Chunk.objects.filter(stream__message__conversation=chat).count() >= 2)
    resumed = sdk.run("ws-resume", chat, "--last-sequence", "3")
    sent = [line["chunk"] for line in sdk.wait(sending) if "chunk" in line]
    frames = [line["frame"] for line in resumed]
    assert frames[0]["type"] == "start" and frames[-1]["type"] == "end"
    chunks = frames[1:-1]
    assert [f["sequence"] for f in chunks] == list(range(4, len(sent)))
    assert [f["chunk"] for f in chunks] == sent[4:]


def test_a_websocket_abort_stops_the_answer_as_a_cancel_does(sdk, chat, fake_llm):
    fake_llm.reply, fake_llm.token_delay = LONG_REPLY, 0.05
    lines = sdk.run("ws-abort", chat, "--chunks", "3")
    assert lines[-1] == {"aborted": True}
    stream = final_stream(lines[0]["chunk"]["messageMetadata"]["stream_id"])
    assert stream.status == "cancelled" and stream.text != LONG_REPLY
