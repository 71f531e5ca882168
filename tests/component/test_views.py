"""The HTTP API: a stream's body, cancel, and the stream as Server-Sent Events."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import AsyncClient

from streaming import Finish, services
from streaming.core.lifecycle import Status
from streaming.models import Stream
from streaming.services import ChunkWrite
from tests.fixtures import parts_of
from tests.servers import SseClient, WsClient, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def user_and_client(name: str = "ann", *, csrf: bool = False):
    user = get_user_model().objects.create_user(name, password="pw")
    client = AsyncClient(enforce_csrf_checks=csrf)
    client.force_login(user)
    return user, client


@sync_to_async
def stream_with_chunks(owner, *batches, final: bool = False, report=None, group="room.v"):
    stream = services.stream_create(group=group, owner=owner, claimed=True)
    with transaction.atomic():
        if batches:
            services.chunks_append(writes=[ChunkWrite(str(stream.id), 0, list(batches))])
        if final:
            services.stream_end(
                stream_id=stream.id,
                status=Status.DONE,
                written=parts_of(batches),
                first_seq=len(batches),
                report=report,
            )
    return stream


async def test_the_body_carries_text_reasoning_and_what_the_server_reported():
    user, client = await user_and_client()
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "reasoning_tokens": 1}
    stream = await stream_with_chunks(
        user, ("reasoning", "R. "), ("text", "T."), final=True, report=Finish("stop", "m", usage)
    )
    response = await client.get(f"/api/streams/{stream.id}/")
    assert response.json() == {
        "stream_id": str(stream.id),
        "status": "done",
        "text": "T.",
        "reasoning": "R. ",
        "last_seq": 1,
        "error": None,
        "snapshot": False,
        "finish_reason": "stop",
        "model": "m",
        "usage": usage,
    }


async def test_the_body_after_a_seq_is_what_follows_it():
    user, client = await user_and_client()
    stream = await stream_with_chunks(user, ("text", "A. "), ("text", "B."))
    body = (await client.get(f"/api/streams/{stream.id}/?after=0")).json()
    assert (body["text"], body["last_seq"], body["status"]) == ("B.", 1, "streaming")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/streams/{id}/?after=x", 400, "invalid_frame"),
        ("/api/streams/{id}/?after=-2", 400, "invalid_frame"),
        ("/api/streams/00000000-0000-0000-0000-000000000000/", 404, "unknown_stream"),
        ("/api/streams/not-a-uuid/", 404, "unknown_stream"),
        ("/api/streams/{id}/events/?after=1.5", 400, "invalid_frame"),
    ],
)
async def test_bad_requests_get_a_json_error_with_a_code(path, status, code):
    user, client = await user_and_client()
    stream = await stream_with_chunks(user)
    response = await client.get(path.format(id=stream.id))
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert response.json()["error"]["detail"]


async def test_a_malformed_last_event_id_is_a_400():
    user, client = await user_and_client()
    stream = await stream_with_chunks(user)
    response = await client.get(f"/api/streams/{stream.id}/events/", headers={"Last-Event-ID": "x"})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_frame")


async def test_anonymous_requests_are_403_and_foreign_streams_404():
    owner, _ = await user_and_client("owner")
    _, stranger = await user_and_client("stranger")
    stream = await stream_with_chunks(owner)
    for suffix in ("", "events/"):
        anonymous = await AsyncClient().get(f"/api/streams/{stream.id}/{suffix}")
        assert anonymous.status_code == 403
        assert (await stranger.get(f"/api/streams/{stream.id}/{suffix}")).status_code == 404
    assert (await stranger.post(f"/api/streams/{stream.id}/cancel/")).status_code == 404


async def test_cancel_over_http_ends_an_active_stream_and_leaves_a_final_one():
    user, client = await user_and_client()
    active = await stream_with_chunks(user, ("text", "Kept. "))
    final = await stream_with_chunks(user, final=True)
    response = await client.post(f"/api/streams/{active.id}/cancel/")
    assert response.status_code == 202
    row = await Stream.objects.aget(id=active.id)
    assert (row.status, row.text) == ("cancelled", "Kept. ")
    response = await client.post(f"/api/streams/{final.id}/cancel/")
    assert (response.status_code, response.json()["status"]) == (200, "done")


async def test_cancel_without_a_csrf_token_is_refused_and_changes_nothing():
    user, client = await user_and_client(csrf=True)
    stream = await stream_with_chunks(user)
    response = await client.post(f"/api/streams/{stream.id}/cancel/")
    assert response.status_code == 403
    assert (await Stream.objects.aget(id=stream.id)).status == "streaming"


async def test_the_events_of_a_final_stream_are_a_snapshot_then_its_status():
    user, client = await user_and_client()
    stream = await stream_with_chunks(user, ("reasoning", "R. "), ("text", "T."), final=True)
    response = await client.get(f"/api/streams/{stream.id}/events/")
    assert response["Content-Type"] == "text/event-stream"
    assert (response["Cache-Control"], response["X-Accel-Buffering"]) == ("no-cache", "no")
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    events = [e for e in body.split("\n\n") if e.startswith(("id:", "event:"))]
    assert events[0].startswith("id: 1\nevent: snapshot\n")
    assert events[1].startswith("event: status\n")
    assert len(events) == 2


# --- over real daphne, two processes sharing Redis -------------------------------------


@sync_to_async
def login(name: str = "ann"):
    user = get_user_model().objects.create_user(name, password="pw")
    return user, session_cookie(user)


async def start_on(front, cookie: str, words: list[str], pause: float) -> tuple[WsClient, str]:
    driver = await WsClient(front, "/ws/rooms/sse/", cookie).connect()
    await driver.send({"type": "start", "words": words, "pause": pause})
    started = await driver.until(lambda f: f["type"] == "started")
    return driver, started["stream_id"]


@pytest.mark.parametrize("resume_with", ["Last-Event-ID", "after"])
async def test_a_reader_on_the_other_process_resumes_mid_answer_exactly(
    start_daphne, test_redis_url, resume_with
):
    front = start_daphne(redis_url=test_redis_url)
    back = start_daphne(redis_url=test_redis_url)
    _, cookie = await login()
    words = [f"Sentence {i}. " for i in range(40)]
    driver, stream_id = await start_on(front, cookie, words, pause=0.03)
    first = SseClient(f"{back.http_url}/api/streams/{stream_id}/events/", {"Cookie": cookie})
    await first.read(until=lambda e: e.get("event") == "chunk" and int(e["id"]) >= 3)
    last_id = first.events[-1]["id"]
    url = f"{back.http_url}/api/streams/{stream_id}/events/"
    if resume_with == "after":
        url += f"?after={last_id}"
        headers = {"Cookie": cookie}
    else:
        headers = {"Cookie": cookie, "Last-Event-ID": last_id}
    rest = SseClient(url, headers)
    await rest.read()
    frames = first.frames() + rest.frames()
    chunks = [f for f in frames if f["type"] == "chunk"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["text"] for c in chunks) == "".join(words)
    assert rest.frames()[-1]["type"] == "status" and rest.frames()[-1]["status"] == "done"
    await driver.close()


async def test_a_silent_stream_gets_keep_alive_comments(start_daphne, test_redis_url):
    server = start_daphne(redis_url=test_redis_url, STREAMING_SSE_KEEPALIVE_SECONDS="0.3")
    _, cookie = await login()
    driver, stream_id = await start_on(server, cookie, ["Slow. ", "Done."], pause=1.5)
    reader = SseClient(f"{server.http_url}/api/streams/{stream_id}/events/", {"Cookie": cookie})
    await reader.read(until=lambda e: e.get("event") == "status" and e["data"]["status"] == "done")
    comments = [e for e in reader.events if "comment" in e]
    assert comments and comments[0]["comment"] == "keep-alive"
    await driver.close()


async def test_an_event_stream_ends_after_its_bounded_time_and_resumes_after(
    start_daphne, test_redis_url
):
    # Two seconds for the first response, of an answer of six: with one second, a CI run
    # on a loaded machine once saw the response end before its first chunk.
    server = start_daphne(redis_url=test_redis_url, STREAMING_SSE_MAX_SECONDS="2")
    _, cookie = await login()
    words = [f"Word {i}. " for i in range(40)]
    driver, stream_id = await start_on(server, cookie, words, pause=0.15)
    url = f"{server.http_url}/api/streams/{stream_id}/events/"
    first = SseClient(url, {"Cookie": cookie})
    await first.read()  # ends by itself after about two seconds, mid-answer
    assert first.frames() and first.frames()[-1]["type"] != "status"
    frames = first.frames()
    while frames[-1]["type"] != "status":
        last = next(e["id"] for e in reversed(first.events) if "id" in e)
        first = SseClient(url, {"Cookie": cookie, "Last-Event-ID": last})
        await first.read()
        frames += first.frames()
    chunks = [f for f in frames if f["type"] == "chunk"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["text"] for c in chunks) == "".join(words)
    await driver.close()


async def test_cancel_over_http_reaches_a_driver_on_the_other_process(start_daphne, test_redis_url):
    front = start_daphne(redis_url=test_redis_url)
    back = start_daphne(redis_url=test_redis_url)
    _, cookie = await login()
    driver, stream_id = await start_on(front, cookie, ["word "] * 400, pause=0.02)
    await driver.until(lambda f: f["type"] == "token")
    import aiohttp

    async with aiohttp.ClientSession() as session:
        csrf = "a" * 32
        headers = {"Cookie": f"{cookie}; csrftoken={csrf}", "X-CSRFToken": csrf}
        async with session.post(
            f"{back.http_url}/api/streams/{stream_id}/cancel/", headers=headers
        ) as response:
            assert response.status == 202
    view = await driver.until_final(stream_id)
    assert view.final["status"] == "cancelled"
    row = await Stream.objects.aget(id=stream_id)
    assert row.text == "".join(f["text"] for f in driver.frames if f["type"] == "token")
    await driver.close()


async def test_stopping_a_server_ends_its_answers_at_once_with_what_was_shown(
    start_daphne, test_redis_url
):
    """SIGTERM to the driving process: within 5 s its answer is persisted up to the last
    token its driver was shown and ends in error, and a viewer elsewhere is told."""
    import time

    from streaming.driver import SERVER_STOPPED

    front = start_daphne(redis_url=test_redis_url)
    back = start_daphne(redis_url=test_redis_url)
    _, cookie = await login()
    viewer = await WsClient(back, "/ws/rooms/sse/", cookie).connect()
    driver, stream_id = await start_on(front, cookie, ["word "] * 2000, pause=0.01)
    await viewer.until(lambda f: f["type"] == "chunk")
    stopped_at = time.monotonic()
    front.process.terminate()
    view = await viewer.until_final(stream_id, timeout=10)
    assert time.monotonic() - stopped_at < 5
    assert (view.final["status"], view.final["error"]) == ("error", SERVER_STOPPED)
    shown = "".join(f["text"] for f in driver.frames if f["type"] == "token")
    row = await Stream.objects.aget(id=stream_id)
    assert row.text.startswith(shown) and view.verified()
    front.process.wait(10)
