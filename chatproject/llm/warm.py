"""Warming the LLM provider up in each event loop that serves requests. Daphne sends no
ASGI lifespan events, so a loop's first connection is the earliest moment it can start."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from chatproject.llm import get_provider


class WarmUpProvider:
    """ASGI middleware: the first connection each event loop serves (a page load, a
    socket, an API call) starts ``get_provider().warm_up()`` beside it, so the loop's
    first answer finds its HTTP client built and a connection to the LLM server open:
    with a remote server, the TCP and TLS handshakes are off the first prompt's path."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._warmed: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._warming: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        loop = asyncio.get_running_loop()
        if loop not in self._warmed:
            self._warmed.add(loop)
            task = loop.create_task(get_provider().warm_up())
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)
        await self.app(scope, receive, send)
