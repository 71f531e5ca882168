"""The websocket handshake's Origin check, by Django's CSRF rule.

A browser sends a page's cookies with a websocket handshake to any site, and no CSRF
token: the Origin header is the only sign of which page opened it. Channels'
``AllowedHostsOriginValidator`` compares the Origin's host with ``ALLOWED_HOSTS`` and
ignores scheme and port, so a page on ``http://localhost:1234`` could open a socket on
a server at ``localhost:8000``. ``OriginValidator`` accepts what Django's
``CsrfViewMiddleware`` accepts for an unsafe HTTP request: the site's own scheme, host
and port, or an origin in ``CSRF_TRUSTED_ORIGINS``.
"""

from __future__ import annotations

import io
import logging
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.utils.http import is_same_domain

logger = logging.getLogger(__name__)


def handshake_refusal(scope: dict[str, Any]) -> str | None:
    """Why a websocket handshake's Origin is refused, or None when it is the site's own.

    The site is what Django makes of the request: the Host header checked against
    ``ALLOWED_HOSTS`` (``X-Forwarded-Host`` under ``USE_X_FORWARDED_HOST``), and https
    for ``wss`` (or ``SECURE_PROXY_SSL_HEADER``), http for ``ws``.
    """
    origin = next((v for k, v in scope.get("headers", ()) if k == b"origin"), b"")
    origin_text = origin.decode("latin1")
    if not origin_text:
        return "no Origin header"
    request = _as_http_request(scope)
    try:
        host = request.get_host()
    except DisallowedHost:
        return f"Host {request.META.get('HTTP_HOST', '')!r} is not in ALLOWED_HOSTS"
    site = f"{'https' if request.is_secure() else 'http'}://{host}"
    if origin_text == site or _trusted(origin_text):
        return None
    return f"Origin {origin_text!r} is neither {site} nor in CSRF_TRUSTED_ORIGINS"


def _as_http_request(scope: dict[str, Any]) -> ASGIRequest:
    """The handshake as the HTTP GET it is, so Django's own host and scheme rules apply."""
    secure = scope.get("scheme") in ("wss", "https")
    http_scope = {**scope, "type": "http", "method": "GET", "scheme": "https" if secure else "http"}
    return ASGIRequest(http_scope, io.BytesIO())


def _trusted(origin: str) -> bool:
    """``CSRF_TRUSTED_ORIGINS`` as Django reads it: exact origins, and ``*.`` for a
    domain's subdomains under one scheme."""
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in (t for t in trusted if "*" not in t):
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        pattern.scheme == parsed.scheme
        and is_same_domain(parsed.netloc, pattern.netloc.lstrip("*"))
        for pattern in (urlsplit(t) for t in trusted if "*" in t)
    )


def _user_id(scope: dict[str, Any]) -> str:
    user = scope.get("user")
    return str(user.pk) if user is not None and user.is_authenticated else "anonymous"


class OriginValidator:
    """ASGI middleware: refuse (HTTP 403) a websocket handshake whose Origin is not the
    site's own, and log why once at INFO, with the user when an auth middleware outside
    it has set ``scope["user"]``. Other connection types pass through untouched."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and (reason := handshake_refusal(scope)):
            logger.info(
                "websocket refused: %s (user %s, path %s)",
                reason,
                _user_id(scope),
                scope.get("path", ""),
            )
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
