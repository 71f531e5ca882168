"""The websocket Origin check (streaming.security): Django's CSRF rule, scheme, host and
port, or CSRF_TRUSTED_ORIGINS; in process, then over a real daphne."""

from __future__ import annotations

import pytest
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from websockets.exceptions import InvalidStatus

from chatproject.chat.models import Conversation
from streaming.security import OriginValidator, handshake_refusal
from tests.servers import WsClient, session_cookie

SITE = b"localhost:8000"


class Accept(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()


async def handshake(*headers: tuple[bytes, bytes]) -> bool:
    """Whether a handshake with these headers is accepted, on a socket that accepts all
    the validator lets through."""
    communicator = WebsocketCommunicator(OriginValidator(Accept.as_asgi()), "/ws/", list(headers))
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    return connected


async def test_the_sites_own_scheme_host_and_port_is_accepted():
    assert await handshake((b"host", SITE), (b"origin", b"http://localhost:8000"))


async def test_another_port_on_the_same_host_is_refused():
    assert not await handshake((b"host", SITE), (b"origin", b"http://localhost:1234"))


async def test_another_scheme_is_refused():
    assert not await handshake((b"host", SITE), (b"origin", b"https://localhost:8000"))


async def test_a_handshake_without_origin_is_refused():
    assert not await handshake((b"host", SITE))


async def test_a_host_outside_allowed_hosts_is_refused_even_from_its_own_origin():
    assert not await handshake((b"host", b"evil.example"), (b"origin", b"http://evil.example"))


async def test_a_trusted_origin_is_accepted(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com"]
    assert await handshake((b"host", SITE), (b"origin", b"https://app.example.com"))


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        (b"https://chat.example.com", True),
        (b"https://example.com", True),
        (b"http://chat.example.com", False),
        (b"https://chat.example.com.evil.example", False),
    ],
)
async def test_a_wildcard_trusted_origin_covers_its_domain_in_one_scheme(
    settings, origin, accepted
):
    settings.CSRF_TRUSTED_ORIGINS = ["https://*.example.com"]
    assert await handshake((b"host", SITE), (b"origin", origin)) is accepted


def scope(scheme: str, origin: bytes, **extra: bytes) -> dict:
    headers = [(b"host", SITE), (b"origin", origin)]
    headers += [(name.replace("_", "-").encode(), value) for name, value in extra.items()]
    return {"type": "websocket", "path": "/ws/", "scheme": scheme, "headers": headers}


def test_a_secure_socket_belongs_to_the_https_origin():
    assert handshake_refusal(scope("wss", b"https://localhost:8000")) is None
    assert handshake_refusal(scope("wss", b"http://localhost:8000")) is not None


def test_a_tls_proxy_header_makes_the_site_https_as_for_http_requests(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    forwarded = scope("ws", b"https://localhost:8000", x_forwarded_proto=b"https")
    assert handshake_refusal(forwarded) is None


# --- over a real daphne -----------------------------------------------------------------


@pytest.fixture
def ann_socket(transactional_db, start_daphne):
    """A WsClient factory for ann on her own conversation, on a fresh daphne."""
    ann = get_user_model().objects.create_user("ann", password="pw")
    conversation = Conversation.objects.create(owner=ann)
    server = start_daphne()
    cookie = session_cookie(ann)

    def make(origin: str) -> WsClient:
        return WsClient(server, f"/ws/conversations/{conversation.pk}/", cookie, origin)

    return server, ann, make


async def test_daphne_refuses_a_page_on_another_port_of_the_same_host(ann_socket):
    server, _, make = ann_socket
    with pytest.raises(InvalidStatus) as refused:
        await make(f"http://127.0.0.1:{server.port + 1}").connect()
    assert refused.value.response.status_code == 403
    accepted = await make(server.http_url).connect()
    await accepted.close()


async def test_a_refused_handshake_is_logged_once_with_its_reason_and_user(ann_socket):
    server, ann, make = ann_socket
    foreign = "http://evil.example"
    with pytest.raises(InvalidStatus):
        await make(foreign).connect()
    lines = [line for line in server.log().splitlines() if "websocket refused" in line]
    assert len(lines) == 1, server.log()
    assert f"INFO streaming.security: websocket refused: Origin '{foreign}'" in lines[0]
    assert f"(user {ann.pk}, path /ws/conversations/" in lines[0]
