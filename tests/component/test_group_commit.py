"""``GroupCommit``: callers' items that arrive while a call runs go together in the
next call, one call at a time; each caller gets its own result or error."""

from __future__ import annotations

import asyncio
import threading

import pytest

from streaming.asyncdb import GroupCommit


class Store:
    """A ``store`` that records its calls and, while ``hold`` is clear, blocks its
    worker thread (so the test can submit while a call runs)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.started = threading.Event()
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, items: list[int]) -> list[int | Exception]:
        self.calls.append(items)
        self.started.set()
        self.hold.wait(10)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def during_a_call(
    group: GroupCommit[int, int], store: Store, items: list[int]
) -> tuple[asyncio.Future[int], list[asyncio.Future[int]]]:
    """Item 0 submitted and its call running (held), then ``items`` submitted meanwhile
    (each queued); the caller releases the call with ``store.hold.set()``."""
    store.hold.clear()
    first = asyncio.ensure_future(group.submit(0))
    await asyncio.to_thread(store.started.wait, 10)
    later = [asyncio.ensure_future(group.submit(n)) for n in items]
    await asyncio.sleep(0)  # every submit has queued its item
    return first, later


async def test_a_lone_item_is_stored_at_once_alone() -> None:
    store = Store()
    assert await GroupCommit(store, max_items=10).submit(4) == 40
    assert store.calls == [[4]]


async def test_items_submitted_while_a_call_runs_go_together_in_the_next() -> None:
    store = Store()
    first, later = await during_a_call(GroupCommit(store, max_items=10), store, [4, 6, 8])
    store.hold.set()
    assert await asyncio.gather(first, *later) == [0, 40, 60, 80]
    assert store.calls == [[0], [4, 6, 8]]


async def test_a_call_takes_at_most_max_items() -> None:
    store = Store()
    first, later = await during_a_call(GroupCommit(store, max_items=2), store, [2, 4, 6])
    store.hold.set()
    await asyncio.gather(first, *later)
    assert store.calls == [[0], [2, 4], [6]]


async def test_an_items_error_is_raised_to_its_caller_alone() -> None:
    store = Store()
    first, (odd, even) = await during_a_call(GroupCommit(store, max_items=10), store, [3, 4])
    store.hold.set()
    await first
    with pytest.raises(ValueError, match="odd 3"):
        await odd
    assert await even == 40


async def test_an_error_of_the_whole_call_reaches_each_of_its_callers() -> None:
    def broken(items: list[int]) -> list[int | Exception]:
        raise ConnectionError("the database is away")

    group = GroupCommit(broken, max_items=10)
    results = await asyncio.gather(group.submit(1), group.submit(2), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    assert await GroupCommit(Store(), max_items=10).submit(2) == 20  # nothing stuck


async def test_a_caller_cancelled_before_its_call_is_left_out_of_it() -> None:
    store = Store()
    first, (gone, kept) = await during_a_call(GroupCommit(store, max_items=10), store, [2, 4])
    gone.cancel()
    store.hold.set()
    assert (await first, await kept) == (0, 40)
    assert store.calls == [[0], [4]]
