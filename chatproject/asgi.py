"""ASGI entry point: HTTP through Django, websockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chatproject.chat.routing import websocket_urlpatterns  # noqa: E402
from chatproject.llm.warm import WarmUpProvider  # noqa: E402
from chatproject.socket_auth import SocketAuthMiddlewareStack  # noqa: E402
from streaming.security import OriginValidator  # noqa: E402

# The LLM provider warms up beside the first connection (daphne has no startup hook).
application = WarmUpProvider(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            # The Origin check inside the session stack, so a refusal's log names the user.
            "websocket": SocketAuthMiddlewareStack(
                OriginValidator(URLRouter(websocket_urlpatterns))
            ),
        }
    )
)
