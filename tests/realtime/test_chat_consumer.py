"""The chat websocket, frame by frame, with Channels' in-process communicator: the
prompt frame, message frames and the driving flag, history and limits, one LLM call per
prompt, and how the sockets of one conversation share its answers. What the streaming
component's mixin does alone (resume and cancel frames, repairs, frame encoding) is
tested in tests/component/test_consumer_mixin.py."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.sessions import InstanceSessionWrapper

from chatproject.chat.consumers import MESSAGE_EVENT
from chatproject.chat.models import Message
from streaming.core.lifecycle import text_digest
from streaming.models import Chunk, Stream

pytestmark = pytest.mark.django_db(transaction=True)


async def prompted(socket, text: str = "Hi") -> str:
    await socket.send({"type": "prompt", "text": text})
    return await started(socket)


async def started(socket) -> str:
    """The id of the stream of the next assistant message frame the socket gets."""
    frame = await socket.until(
        lambda f: f["type"] == "message" and f["message"]["role"] == "assistant"
    )
    return frame["message"]["stream_id"]


async def user_conversation_socket(make_user, make_conversation, connect):
    user = await make_user()
    conversation = await make_conversation(user)
    _, socket = await connect(conversation.pk, user=user)
    return user, conversation, socket


# --- handshake ---------------------------------------------------------------------------


async def test_an_anonymous_socket_is_refused(make_user, make_conversation, connect):
    conversation = await make_conversation(await make_user())
    connected, _ = await connect(conversation.pk, user=None)
    assert not connected


async def test_a_foreign_origin_is_refused(make_user, make_conversation, connect):
    user = await make_user()
    conversation = await make_conversation(user)
    connected, _ = await connect(conversation.pk, user=user, origin=b"http://evil.example")
    assert not connected


async def test_another_users_conversation_is_refused(make_user, make_conversation, connect):
    conversation = await make_conversation(await make_user("ann"))
    connected, _ = await connect(conversation.pk, user=await make_user("bob"))
    assert not connected


async def test_frames_to_a_socket_skip_channels_session_save_wrapper(
    make_user, make_conversation, connect, monkeypatch
):
    wrapped: list[str] = []
    original = InstanceSessionWrapper.send

    async def spy(self, message):
        wrapped.append(message["type"])
        return await original(self, message)

    monkeypatch.setattr(InstanceSessionWrapper, "send", spy)
    _, _, socket = await user_conversation_socket(make_user, make_conversation, connect)
    await socket.send({"type": "ping"})
    assert (await socket.next())["type"] == "error"
    assert wrapped == []


# --- the driven pattern --------------------------------------------------------------------


async def test_the_driver_gets_its_message_frames_before_any_token(
    make_user, make_conversation, connect
):
    user = await make_user()
    _, socket = await connect((await make_conversation(user)).pk, user=user)
    await socket.send({"type": "prompt", "text": "Hello"})
    first, second, third = await socket.next(), await socket.next(), await socket.next()
    assert (first["type"], first["message"]["role"], first["driving"]) == ("message", "user", False)
    assert (second["type"], second["message"]["role"], second["driving"]) == (
        "message",
        "assistant",
        True,
    )
    stream_id = second["message"]["stream_id"]
    # Then the answer's own frames: its tokens (sent to the driver directly) or its
    # "streaming" status (through the group), whichever comes first; nothing else.
    assert (third["type"], third["stream_id"]) in {("token", stream_id), ("status", stream_id)}
    await socket.until_final(stream_id)
    tokens = [f for f in socket.frames if f["type"] == "token"]
    assert tokens and {f["stream_id"] for f in tokens} == {stream_id}


async def test_driver_tokens_chunks_api_and_message_are_one_string(
    make_user, make_conversation, connect, client
):
    user = await make_user()
    _, socket = await connect((await make_conversation(user)).pk, user=user)
    await socket.send({"type": "prompt", "text": "Tell me things"})
    stream_id = await started(socket)
    final = await socket.until_final(stream_id)
    tokens, chunks = socket.joined("token", stream_id), socket.joined("chunk", stream_id)
    thinking = socket.joined("token", stream_id, part="reasoning")
    assert tokens and tokens == chunks
    assert thinking and thinking == socket.joined("chunk", stream_id, part="reasoning")
    assert socket.seqs(stream_id) == list(range(len(socket.seqs(stream_id))))
    assert (final["length"], final["sha256"]) == text_digest(tokens)
    assert (final["reasoning_length"], final["reasoning_sha256"]) == text_digest(thinking)
    assert final["last_seq"] == socket.seqs(stream_id)[-1]
    await sync_to_async(client.force_login)(user)
    api = (await sync_to_async(client.get)(f"/api/streams/{stream_id}/")).json()
    assert (api["text"], api["reasoning"]) == (tokens, thinking)
    message = await Message.objects.aget(stream_id=stream_id)
    assert (message.text, message.reasoning, message.status) == (tokens, thinking, "done")


async def test_viewers_get_chunks_but_no_tokens_and_one_llm_call_is_made(
    make_user, make_conversation, connect, use_fake_llm
):
    user = await make_user()
    conversation = await make_conversation(user)
    _, driver = await connect(conversation.pk, user=user)
    viewers = [(await connect(conversation.pk, user=user))[1] for _ in range(3)]
    await driver.send({"type": "prompt", "text": "Hi"})
    stream_id = await started(driver)
    await driver.until_final(stream_id)
    for viewer in viewers:
        announced = await viewer.until(
            lambda f: f["type"] == "message" and f["message"]["role"] == "assistant"
        )
        assert announced["driving"] is False
        await viewer.until_final(stream_id)
        assert viewer.joined("token", stream_id) == ""
        assert viewer.joined("chunk", stream_id) == driver.joined("token", stream_id)
    assert use_fake_llm.request_count == 1


async def test_the_llm_receives_the_conversation_history(
    make_user, make_conversation, connect, use_fake_llm
):
    user = await make_user()
    _, socket = await connect((await make_conversation(user)).pk, user=user)
    for prompt in ("First question", "Second question"):
        await socket.send({"type": "prompt", "text": prompt})
        await socket.until_final(await started(socket))
    messages = use_fake_llm.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "Second question"
    assert messages[2]["content"] == use_fake_llm.reply


async def test_an_llm_failure_ends_in_error_with_a_readable_message(
    make_user, make_conversation, connect, use_fake_llm
):
    user = await make_user()
    _, socket = await connect((await make_conversation(user)).pk, user=user)
    await socket.send({"type": "prompt", "text": "[scenario=http500]"})
    final = await socket.until_final(await started(socket))
    assert final["status"] == "error"
    assert "500" in final["error"]


async def test_the_answer_continues_after_the_driver_leaves(
    make_user, make_conversation, connect, use_fake_llm
):
    use_fake_llm.token_delay = 0.02
    user = await make_user()
    conversation = await make_conversation(user)
    _, driver = await connect(conversation.pk, user=user)
    _, viewer = await connect(conversation.pk, user=user)
    await driver.send({"type": "prompt", "text": "Hi"})
    stream_id = await started(driver)
    await driver.until(lambda f: f["type"] == "token")
    await driver.close()
    final = await viewer.until_final(stream_id)
    assert final["status"] == "done"
    assert viewer.joined("chunk", stream_id) == use_fake_llm.reply


async def test_two_racing_prompts_each_get_their_own_answer(make_user, make_conversation, connect):
    user = await make_user()
    conversation = await make_conversation(user)
    _, tab_a = await connect(conversation.pk, user=user)
    _, tab_b = await connect(conversation.pk, user=user)
    await asyncio.gather(
        tab_a.send({"type": "prompt", "text": "from A"}),
        tab_b.send({"type": "prompt", "text": "from B"}),
    )
    streams = {await started(tab_a), await started(tab_b)}
    assert len(streams) == 2
    ended: set[str] = set()
    await tab_a.until(
        lambda f: (
            f["type"] == "status"
            and f["status"] == "done"
            and ended.add(f["stream_id"]) is None
            and ended == streams
        )
    )
    assert await Message.objects.filter(role="assistant", status="done").acount() == 2


# --- cancel ----------------------------------------------------------------------------------


async def test_cancel_from_another_socket_stops_the_answer_and_the_upstream_request(
    make_user, make_conversation, connect, use_fake_llm
):
    user = await make_user()
    conversation = await make_conversation(user)
    _, driver = await connect(conversation.pk, user=user)
    _, other = await connect(conversation.pk, user=user)
    await driver.send({"type": "prompt", "text": "[scenario=endless]"})
    stream_id = await started(driver)
    await driver.until(lambda f: f["type"] == "token")
    await other.send({"type": "cancel", "stream_id": stream_id})
    final = await driver.until_final(stream_id, timeout=5)
    assert final["status"] == "cancelled"
    assert await use_fake_llm.wait_for_async(lambda: use_fake_llm.disconnects == 1, timeout=5)
    stream = await Stream.objects.aget(id=stream_id)
    assert stream.text == driver.joined("token", stream_id)


async def test_cancelling_a_final_stream_is_silent(make_user, make_conversation, connect):
    user = await make_user()
    _, socket = await connect((await make_conversation(user)).pk, user=user)
    await socket.send({"type": "prompt", "text": "Hi"})
    stream_id = await started(socket)
    await socket.until_final(stream_id)
    before = len(socket.frames)
    await socket.send({"type": "cancel", "stream_id": stream_id})
    await socket.settled()  # the cancel was handled: it answered nothing
    assert [f["type"] for f in socket.frames[before:]] == ["error"]  # the barrier's own
    assert (await Stream.objects.aget(id=stream_id)).status == "done"


# --- resume ----------------------------------------------------------------------------------


def chunks_of(socket, stream_id: str) -> list[tuple[int, str, str]]:
    return [
        (f["seq"], f["part"], f["text"])
        for f in socket.frames
        if f["type"] == "chunk" and f["stream_id"] == stream_id
    ]


async def finished_stream(user, conversation, socket) -> str:
    await socket.send({"type": "prompt", "text": "Hi"})
    stream_id = await started(socket)
    await socket.until_final(stream_id)
    return stream_id


async def test_resume_of_a_final_stream_sends_the_rest_then_the_status(
    make_user, make_conversation, connect
):
    user = await make_user()
    conversation = await make_conversation(user)
    _, socket = await connect(conversation.pk, user=user)
    stream_id = await finished_stream(user, conversation, socket)
    _, late = await connect(conversation.pk, user=user)
    await late.send({"type": "resume", "stream_id": stream_id, "after": 0})
    final = await late.until_final(stream_id)
    assert late.seqs(stream_id) == list(range(1, final["last_seq"] + 1))
    # Exactly the chunks the driving socket had after seq 0, each of its part.
    assert chunks_of(late, stream_id) == chunks_of(socket, stream_id)[1:]


async def test_resume_from_the_start_of_a_final_stream_is_one_snapshot(
    make_user, make_conversation, connect
):
    user = await make_user()
    conversation = await make_conversation(user)
    _, socket = await connect(conversation.pk, user=user)
    stream_id = await finished_stream(user, conversation, socket)
    await socket.send({"type": "resume", "stream_id": stream_id, "after": -1})
    snapshot = await socket.next()
    assert snapshot["type"] == "snapshot"
    assert snapshot["text"] == socket.joined("chunk", stream_id)
    assert snapshot["reasoning"] == socket.joined("chunk", stream_id, part="reasoning")
    assert (await socket.next())["type"] == "status"


async def test_resume_after_the_chunks_were_purged_answers_with_a_snapshot(
    make_user, make_conversation, connect
):
    user = await make_user()
    conversation = await make_conversation(user)
    _, socket = await connect(conversation.pk, user=user)
    stream_id = await finished_stream(user, conversation, socket)
    await Chunk.objects.filter(stream_id=stream_id).adelete()
    await socket.send({"type": "resume", "stream_id": stream_id, "after": 1})
    snapshot = await socket.next()
    assert (snapshot["type"], snapshot["text"]) == ("snapshot", socket.joined("chunk", stream_id))


async def test_a_resume_far_behind_a_live_stream_is_one_snapshot_then_live_chunks(
    make_user, make_conversation, connect, settings, use_fake_llm
):
    settings.STREAMING_RESUME_SNAPSHOT_AFTER = 2
    use_fake_llm.reply = " ".join(f"Sentence {i}." for i in range(40))
    use_fake_llm.token_delay = 0.01
    user, conversation, driver = await user_conversation_socket(
        make_user, make_conversation, connect
    )
    stream_id = await prompted(driver)
    await driver.until(lambda f: f["type"] == "chunk" and f["seq"] >= 5)
    _, late = await connect(conversation.pk, user=user)
    await late.send({"type": "resume", "stream_id": stream_id, "after": -1})
    snapshot = await late.next()
    assert snapshot["type"] == "snapshot"
    await late.until_final(stream_id)
    live = late.seqs(stream_id)
    assert live == list(range(snapshot["last_seq"] + 1, snapshot["last_seq"] + 1 + len(live)))
    assert snapshot["text"] + late.joined("chunk", stream_id) == use_fake_llm.reply


async def test_a_resume_while_streaming_misses_nothing_and_repeats_nothing(
    make_user, make_conversation, connect, use_fake_llm
):
    use_fake_llm.reply = " ".join(f"Sentence number {i}." for i in range(30))
    use_fake_llm.token_delay = 0.005
    user, conversation, driver = await user_conversation_socket(
        make_user, make_conversation, connect
    )
    stream_id = await prompted(driver)
    await driver.until(lambda f: f["type"] == "chunk" and f["seq"] >= 2)
    _, late = await connect(conversation.pk, user=user)
    await late.send({"type": "resume", "stream_id": stream_id, "after": 0})
    await late.until_final(stream_id)
    seqs = late.seqs(stream_id)
    assert seqs == list(range(1, seqs[-1] + 1))
    first = (await Chunk.objects.aget(stream_id=stream_id, seq=0)).text
    assert first + late.joined("chunk", stream_id) == use_fake_llm.reply


async def test_chat_message_events_skip_channels_database_thread_hop(
    make_user, make_conversation, connect, monkeypatch
):
    hops: list[str] = []

    async def counted_hop() -> None:
        hops.append("hop")

    monkeypatch.setattr("channels.consumer.aclose_old_connections", counted_hop)
    _, conversation, socket = await user_conversation_socket(make_user, make_conversation, connect)
    hops.clear()
    frame = {"type": "message", "message": {"stream_id": None}, "driving": False}
    await get_channel_layer().group_send(
        conversation.group_name, {"type": MESSAGE_EVENT, "frames": [frame], "sender": "other"}
    )
    assert (await socket.next())["type"] == "message"
    assert hops == []


# --- bad input ---------------------------------------------------------------------------------


LONG_CLIENT_ID = "x" * 65
BAD_FRAMES = [
    ("not json", "invalid_json"),
    ("[" * 5000, "invalid_json"),
    ('{"type": "prompt", "text": "a\\u0000b"}', "invalid_text"),
    ('{"type": "prompt", "text": "lone \\ud800"}', "invalid_text"),
    ("[1, 2]", "invalid_frame"),
    ('{"text": "no type"}', "invalid_frame"),
    ('{"type": 7}', "invalid_frame"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"type": "prompt"}', "invalid_frame"),
    ('{"type": "prompt", "text": 12}', "invalid_frame"),
    ('{"type": "prompt", "text": ""}', "prompt_empty"),
    ('{"type": "prompt", "text": "   "}', "prompt_empty"),
    ('{"type": "prompt", "text": "hi", "client_id": ""}', "invalid_frame"),
    ('{"type": "prompt", "text": "hi", "client_id": "has space"}', "invalid_frame"),
    ('{"type": "prompt", "text": "hi", "client_id": "a/b"}', "invalid_frame"),
    ('{"type": "prompt", "text": "hi", "client_id": "\u00e9t\u00e9"}', "invalid_frame"),
    (f'{{"type": "prompt", "text": "hi", "client_id": "{LONG_CLIENT_ID}"}}', "invalid_frame"),
    ('{"type": "prompt", "text": "hi", "client_id": 12}', "invalid_frame"),
    ('{"type": "prompt", "text": "hi", "client_id": ["a"]}', "invalid_frame"),
]


@pytest.mark.parametrize(("raw", "code"), BAD_FRAMES)
async def test_a_bad_frame_gets_an_error_frame_and_writes_nothing(
    make_user, make_conversation, connect, raw, code
):
    user = await make_user()
    _, socket = await connect((await make_conversation(user)).pk, user=user)
    await socket.send_raw(raw)
    frame = await socket.next()
    assert (frame["type"], frame["code"]) == ("error", code)
    assert frame["detail"]
    assert await Message.objects.acount() == 0
    assert await Stream.objects.acount() == 0
    await socket.send({"type": "prompt", "text": "still open"})
    assert (await socket.next())["type"] == "message"


async def test_an_overlong_prompt_is_refused_before_anything_is_stored(
    make_user, make_conversation, connect, settings
):
    settings.CHAT_PROMPT_MAX_CHARS = 10
    user = await make_user()
    _, socket = await connect((await make_conversation(user)).pk, user=user)
    await socket.send({"type": "prompt", "text": "x" * 11})
    assert (await socket.next())["code"] == "prompt_too_long"
    assert await Message.objects.acount() == 0


async def test_an_oversized_frame_is_refused(make_user, make_conversation, connect, settings):
    settings.CHAT_FRAME_MAX_BYTES = 1000
    user = await make_user()
    _, socket = await connect((await make_conversation(user)).pk, user=user)
    await socket.send_raw(json.dumps({"type": "prompt", "text": "y" * 2000}))
    assert (await socket.next())["code"] == "frame_too_large"


async def test_another_users_stream_is_unknown(make_user, make_conversation, connect):
    ann, bob = await make_user("ann"), await make_user("bob")
    _, ann_socket = await connect((await make_conversation(ann)).pk, user=ann)
    stream_id = await finished_stream(ann, None, ann_socket)
    _, bob_socket = await connect((await make_conversation(bob)).pk, user=bob)
    for frame in (
        {"type": "resume", "stream_id": stream_id, "after": -1},
        {"type": "cancel", "stream_id": stream_id},
    ):
        await bob_socket.send(frame)
        assert (await bob_socket.next())["code"] == "unknown_stream"


async def test_a_prompt_over_the_concurrent_limit_gets_an_error_and_no_llm_call(
    make_user, make_conversation, connect, settings, use_fake_llm
):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 1
    use_fake_llm.scenario = "endless"
    user = await make_user()
    _, socket = await connect((await make_conversation(user)).pk, user=user)
    await socket.send({"type": "prompt", "text": "one"})
    stream_id = await started(socket)
    await socket.until(lambda f: f["type"] == "token")
    await socket.send({"type": "prompt", "text": "two"})
    error = await socket.until(lambda f: f["type"] == "error")
    assert error["code"] == "too_many_active"
    assert use_fake_llm.request_count == 1
    assert await Message.objects.acount() == 2
    await socket.send({"type": "cancel", "stream_id": stream_id})
    await socket.until_final(stream_id)


async def test_a_flood_of_frames_closes_the_socket_with_4008(make_user, make_conversation, connect):
    user = await make_user()
    _, socket = await connect((await make_conversation(user)).pk, user=user)
    for _ in range(100):
        await socket.send_raw("{}")
    output = None
    for _ in range(101):
        output = await socket.communicator.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            break
    assert output == {"type": "websocket.close", "code": 4008}


# --- idempotent prompts, context, a channel layer that fails ------------------------------


async def test_the_same_client_id_twice_stores_nothing_and_calls_no_llm_the_second_time(
    make_user, make_conversation, connect, use_fake_llm
):
    _, _, socket = await user_conversation_socket(make_user, make_conversation, connect)
    await socket.send({"type": "prompt", "text": "Hi", "client_id": "tab-1_msg-1"})
    stream_id = await started(socket)
    await socket.until_final(stream_id)
    before = len(socket.frames)
    await socket.send({"type": "prompt", "text": "Hi again", "client_id": "tab-1_msg-1"})
    await socket.settled()
    again = socket.frames[before:]
    assert [(f["type"], f.get("driving")) for f in again] == [
        ("message", False),
        ("message", False),
        ("error", None),  # the barrier's own: no token, no chunk, no other frame
    ]
    question, answer = again[0]["message"], again[1]["message"]
    assert (question["role"], question["text"], question["client_id"]) == (
        "user",
        "Hi",
        "tab-1_msg-1",
    )
    assert (answer["role"], answer["stream_id"], answer["status"]) == (
        "assistant",
        stream_id,
        "done",
    )
    assert answer["text"] == use_fake_llm.reply
    assert use_fake_llm.request_count == 1
    assert (await Message.objects.acount(), await Stream.objects.acount()) == (2, 1)


async def test_one_client_id_sent_by_two_sockets_at_once_is_one_prompt_and_one_llm_call(
    make_user, make_conversation, connect, use_fake_llm
):
    user = await make_user()
    conversation = await make_conversation(user)
    tabs = [(await connect(conversation.pk, user=user))[1] for _ in range(2)]
    frame = {"type": "prompt", "text": "Hi", "client_id": "retry-1"}
    await asyncio.gather(*(tab.send(frame) for tab in tabs))
    answers = [
        await tab.until(lambda f: f["type"] == "message" and f["message"]["role"] == "assistant")
        for tab in tabs
    ]
    stream_id = answers[0]["message"]["stream_id"]
    assert {a["message"]["stream_id"] for a in answers} == {stream_id}
    assert sorted(a["driving"] for a in answers) == [False, True]
    driver = tabs[[a["driving"] for a in answers].index(True)]
    await driver.until_final(stream_id)
    assert (await Message.objects.acount(), await Stream.objects.acount()) == (2, 1)
    assert use_fake_llm.request_count == 1


@pytest.mark.parametrize("scenario", ["reasoning_content", "reasoning"])
async def test_an_answers_reasoning_is_kept_but_never_sent_back_as_context(
    make_user, make_conversation, connect, use_fake_llm, scenario
):
    use_fake_llm.reasoning_reply = "The user wants the secret plan; let me think it through."
    _, _, socket = await user_conversation_socket(make_user, make_conversation, connect)
    first = f"[scenario={scenario}] What is the plan?"
    await socket.send({"type": "prompt", "text": first})
    thought = await started(socket)
    await socket.until_final(thought)
    assert socket.joined("chunk", thought, part="reasoning") == use_fake_llm.reasoning_reply
    stored = await Message.objects.aget(stream_id=thought)
    assert (stored.text, stored.reasoning) == (use_fake_llm.reply, use_fake_llm.reasoning_reply)

    await socket.send({"type": "prompt", "text": "And then?"})
    await socket.until_final(await started(socket))
    request = use_fake_llm.requests[-1]
    assert request["messages"][1:] == [
        {"role": "user", "content": first},
        {"role": "assistant", "content": use_fake_llm.reply},
        {"role": "user", "content": "And then?"},
    ]
    assert "secret plan" not in json.dumps(request)


async def test_a_layer_failure_announcing_the_prompt_still_lets_it_get_its_answer(
    make_user, make_conversation, connect, monkeypatch
):
    layer = get_channel_layer()
    real_group_send = layer.group_send
    refused: list[str] = []

    async def flaky_group_send(group: str, message: dict) -> None:
        if message["type"] == MESSAGE_EVENT and not refused:
            refused.append(group)
            raise ConnectionError("the channel layer is away")
        await real_group_send(group, message)

    monkeypatch.setattr(layer, "group_send", flaky_group_send)
    _, conversation, socket = await user_conversation_socket(make_user, make_conversation, connect)
    await socket.send({"type": "prompt", "text": "Hi"})
    stream_id = await started(socket)
    final = await socket.until_final(stream_id)
    assert refused == [conversation.group_name]
    assert final["status"] == "done"
    tokens = socket.joined("token", stream_id)
    assert tokens and tokens == socket.joined("chunk", stream_id)
    answer = await Message.objects.aget(stream_id=stream_id)
    stream = await Stream.objects.aget(id=stream_id)
    assert (answer.status, answer.text) == ("done", tokens)
    assert (stream.status, stream.text) == ("done", tokens)
