"""ASGI entry point: HTTP through Django, websockets through Channels."""

import gc
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

# The garbage collector of a server process (measured on CPython 3.12, see
# docs/operations.md). What importing Django and the project built is frozen: a full
# collection never walks it again. And the youngest generation is collected every 20,000
# allocations, not 700: at 300 streams of 40 tokens/s the collector ran 15 times a
# second, and each full collection held the event loop 50 to 90 ms, which was most of the
# tail of token latency.
gc.freeze()
gc.set_threshold(20_000, 50, 50)
