"""GET /api/streams/<id>/?after=N: the fallback for clients without a websocket."""

from __future__ import annotations

import uuid

import pytest

from streaming import services
from streaming.core.lifecycle import Status
from streaming.models import Chunk

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished(make_stream):
    stream = make_stream()
    services.stream_claim(stream_id=stream.id, driver_channel="x")
    services.chunk_append(
        stream_id=stream.id, group=stream.group, first_seq=0, texts=["One. ", "Two. ", "Three."]
    )
    services.stream_finish(stream_id=stream.id, status=Status.DONE)
    return stream


def url(stream, after=None) -> str:
    return f"/api/streams/{stream.id}/" + (f"?after={after}" if after is not None else "")


def test_the_whole_text_without_after(client, owner, finished):
    client.force_login(owner)
    assert client.get(url(finished)).json() == {
        "stream_id": str(finished.id),
        "status": "done",
        "text": "One. Two. Three.",
        "last_seq": 2,
        "error": None,
        "snapshot": False,
    }


def test_only_the_text_after_a_seq(client, owner, finished):
    client.force_login(owner)
    body = client.get(url(finished, 0)).json()
    assert (body["text"], body["last_seq"], body["snapshot"]) == ("Two. Three.", 2, False)


def test_nothing_after_the_last_seq(client, owner, finished):
    client.force_login(owner)
    assert client.get(url(finished, 2)).json()["text"] == ""


def test_purged_chunks_answer_with_a_snapshot_of_the_whole_text(client, owner, finished):
    Chunk.objects.filter(stream=finished).delete()
    client.force_login(owner)
    body = client.get(url(finished, 0)).json()
    assert (body["text"], body["snapshot"]) == ("One. Two. Three.", True)


def test_a_streaming_stream_answers_with_its_persisted_text(client, owner, make_stream):
    stream = make_stream()
    services.stream_claim(stream_id=stream.id, driver_channel="x")
    services.chunk_append(stream_id=stream.id, group=stream.group, first_seq=0, texts=["So far. "])
    client.force_login(owner)
    body = client.get(url(stream, -1)).json()
    assert (body["status"], body["text"], body["last_seq"]) == ("streaming", "So far. ", 0)


def test_an_empty_stream_has_last_seq_minus_one(client, owner, make_stream):
    client.force_login(owner)
    assert client.get(url(make_stream())).json()["last_seq"] == -1


def test_anonymous_is_403(client, finished):
    assert client.get(url(finished)).status_code == 403


def test_another_users_stream_is_404(client, django_user_model, finished):
    client.force_login(django_user_model.objects.create_user("bob", password="pw"))
    assert client.get(url(finished)).status_code == 404


@pytest.mark.parametrize("stream_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_an_unknown_stream_is_404(client, owner, stream_id):
    client.force_login(owner)
    assert client.get(f"/api/streams/{stream_id}/").status_code == 404


def test_a_malformed_after_is_400(client, owner, finished):
    client.force_login(owner)
    assert client.get(url(finished, "x")).status_code == 400
