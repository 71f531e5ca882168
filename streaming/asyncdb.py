"""Running sync ORM work from async code without blocking the loop: one call at a time
(``run_in_db``), or many callers' items in one call (``GroupCommit``)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
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


class GroupCommit[I, R]:
    """Calls ``store`` on the worker thread with many items at once: one call at a time
    per event loop, and the items submitted while a call runs go together in the next
    (a burst's prompts share one transaction and its statements). A lone item goes at
    once, so quiet traffic waits for nothing.

    ``store`` returns one result per item, in order; a result that is an exception is
    raised to that item's caller alone. An exception raised by ``store`` itself reaches
    every caller of that call. A caller cancelled before its call starts is left out of
    it."""

    def __init__(self, store: Callable[[list[I]], list[R | Exception]], *, max_items: int) -> None:
        self._store = store
        self._max_items = max_items
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue[I, R]] = (
            weakref.WeakKeyDictionary()
        )

    async def submit(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        result: asyncio.Future[R] = loop.create_future()
        queue.waiting.append((item, result))
        if queue.task is None:
            queue.task = loop.create_task(self._drain(queue))
        return await result

    async def _drain(self, queue: _Queue[I, R]) -> None:
        try:
            while queue.waiting:
                batch = [(i, r) for i, r in queue.waiting[: self._max_items] if not r.done()]
                del queue.waiting[: self._max_items]
                if batch:
                    await self._call(batch)
        finally:
            queue.task = None
            for _, result in queue.waiting:  # only when the loop cancels this task
                result.cancel()
            queue.waiting.clear()

    async def _call(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await run_in_db(self._store, [item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(outcomes)} results for {len(batch)} items")
        except Exception as exc:
            outcomes = [exc] * len(batch)
        except BaseException:  # the loop is stopping: so are the callers
            for _, result in batch:
                result.cancel()
            raise
        for (_, result), outcome in zip(batch, outcomes, strict=True):
            if result.done():  # its caller was cancelled while the call ran
                continue
            if isinstance(outcome, Exception):
                result.set_exception(outcome)
            else:
                result.set_result(outcome)


@dataclass
class _Queue[I, R]:
    waiting: list[tuple[I, asyncio.Future[R]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
