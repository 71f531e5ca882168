import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from chatproject.asgi import application
from chatproject.chat.models import Conversation

pytestmark = pytest.mark.django_db(transaction=True)


async def test_prompt_streams_demo_answer():
    from asgiref.sync import sync_to_async

    user = await sync_to_async(get_user_model().objects.create_user)("ann", password="pw")
    conv = await Conversation.objects.acreate(owner=user)
    from channels.auth import login  # noqa
    from django.test import Client

    client = Client()
    await sync_to_async(client.force_login)(user)
    cookie = client.cookies["sessionid"].value
    comm = WebsocketCommunicator(
        application,
        f"/ws/conversations/{conv.pk}/",
        headers=[
            (b"origin", b"http://localhost"),
            (b"host", b"localhost"),
            (b"cookie", f"sessionid={cookie}".encode()),
        ],
    )
    ok, _ = await comm.connect()
    assert ok
    await comm.send_json_to({"type": "prompt", "text": "hello there"})
    frames = []
    while True:
        f = await comm.receive_json_from(timeout=10)
        frames.append(f)
        if f["type"] == "status" and f["status"] not in ("pending", "streaming"):
            break
    tokens = "".join(f["text"] for f in frames if f["type"] == "token")
    chunks = "".join(f["text"] for f in frames if f["type"] == "chunk")
    print([f["type"] for f in frames][:10], len(frames))
    assert tokens == chunks and tokens
    await comm.disconnect()
