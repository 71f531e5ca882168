"""HTTP through Django, websockets through Channels with the session's user."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "summaryproject.settings")
django_asgi_app = get_asgi_application()  # sets Django up before the consumer's import

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from summaries.consumers import SummaryConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(
                URLRouter([path("ws/summaries/<int:summary_id>/", SummaryConsumer.as_asgi())])
            )
        ),
    }
)
