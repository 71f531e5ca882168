"""Counters for what a benchmark causes: SQL statements on every connection of the
process, and messages on a channel layer."""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections import Counter
from typing import Any

WRITE_KINDS = frozenset({"INSERT", "UPDATE", "DELETE"})


class StatementCounter:
    """Counts the SQL statements of every connection of this process, whatever the
    thread (the driver's writes run in worker threads), like a process-wide
    ``CaptureQueriesContext``: statements by kind, write transactions (a transaction
    holding at least one INSERT/UPDATE/DELETE, or one such statement in autocommit),
    and, with ``keep_durations``, each statement's duration."""

    def __init__(self, *, keep_durations: bool = False) -> None:
        self.kinds: Counter[str] = Counter()
        self.write_transactions = 0
        self.keep_durations = keep_durations
        self.durations: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        self._hooked: list[Any] = []

    @property
    def writes(self) -> int:
        return sum(self.kinds[kind] for kind in WRITE_KINDS)

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        kind = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.kinds[kind] += 1
                if self.keep_durations:
                    self.durations.append((kind, elapsed))
            if kind in WRITE_KINDS:
                self._note_write(context["connection"])

    def _note_write(self, conn: Any) -> None:
        if not conn.in_atomic_block:
            with self._lock:
                self.write_transactions += 1
        elif not getattr(conn, "_bench_counted", False):
            with self._lock:
                self.write_transactions += 1
            conn._bench_counted = True
            conn.on_commit(lambda: setattr(conn, "_bench_counted", False))

    def _hook(self, conn: Any) -> None:
        if self not in conn.execute_wrappers:
            conn.execute_wrappers.append(self)
            self._hooked.append(conn)

    def _on_connection_created(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        self._hook(connection)

    def __enter__(self) -> StatementCounter:
        from django.db import connections
        from django.db.backends.signals import connection_created

        connection_created.connect(self._on_connection_created, weak=False)
        for conn in connections.all():
            self._hook(conn)
        return self

    def __exit__(self, *exc: object) -> None:
        from django.db.backends.signals import connection_created

        connection_created.disconnect(self._on_connection_created)
        for conn in self._hooked:
            with contextlib.suppress(ValueError):
                conn.execute_wrappers.remove(self)
        self._hooked.clear()


_in_group_send: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "in_group_send", default=False
)


class LayerCounter:
    """Counts group messages (each ``group_send``, each message of a
    ``group_send_many``) and ``send`` calls on a channel layer instance (a ``send`` made
    by the layer itself inside a group send is not counted twice)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.group_sends = 0
        self.sends = 0

    def __enter__(self) -> LayerCounter:
        group_send, send = self.layer.group_send, self.layer.send

        async def counted_group_send(group: str, message: dict[str, Any]) -> None:
            self.group_sends += 1
            token = _in_group_send.set(True)
            try:
                await group_send(group, message)
            finally:
                _in_group_send.reset(token)

        group_send_many = getattr(self.layer, "group_send_many", None)

        async def counted_group_send_many(sends: list[tuple[str, dict[str, Any]]]) -> None:
            if not _in_group_send.get():  # the layer's group_send goes through it
                self.group_sends += len(sends)
            token = _in_group_send.set(True)
            try:
                await group_send_many(sends)  # type: ignore[misc]
            finally:
                _in_group_send.reset(token)

        async def counted_send(channel: str, message: dict[str, Any]) -> None:
            if not _in_group_send.get():
                self.sends += 1
            await send(channel, message)

        self.layer.group_send, self.layer.send = counted_group_send, counted_send
        if group_send_many is not None:  # the writer's rounds go through it
            self.layer.group_send_many = counted_group_send_many
        return self

    def __exit__(self, *exc: object) -> None:
        del self.layer.group_send
        del self.layer.send
        if "group_send_many" in vars(self.layer):
            del self.layer.group_send_many
