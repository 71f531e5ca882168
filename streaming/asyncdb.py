"""Running the component's sync ORM work from async code without blocking the loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

P = ParamSpec("P")
T = TypeVar("T")


def _with_fresh_connection[**P, T](fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


async def run_in_db[**P, T](fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` in a worker thread, like channels' ``database_sync_to_async``, but not
    thread-sensitive: Channels gives consumers no per-connection thread context, so
    thread-sensitive calls would queue every socket's queries behind one thread."""
    return await sync_to_async(_with_fresh_connection, thread_sensitive=False)(fn, *args, **kwargs)
