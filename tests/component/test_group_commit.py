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


async def started(store: Store) -> None:
    await asyncio.to_thread(store.started.wait, 10)


async def test_a_lone_item_is_stored_at_once_alone() -> None:
    store = Store()
    assert await GroupCommit(store, max_items=10).submit(4) == 40
    assert store.calls == [[4]]


async def test_items_submitted_while_a_call_runs_go_together_in_the_next() -> None:
    store = Store()
    group = GroupCommit(store, max_items=10)
    store.hold.clear()
    first = asyncio.ensure_future(group.submit(2))
    await started(store)
    later = [asyncio.ensure_future(group.submit(n)) for n in (4, 6, 8)]
    await asyncio.sleep(0)  # every submit has queued its item
    store.hold.set()
    assert await asyncio.gather(first, *later) == [20, 40, 60, 80]
    assert store.calls == [[2], [4, 6, 8]]


async def test_a_call_takes_at_most_max_items() -> None:
    store = Store()
    group = GroupCommit(store, max_items=2)
    store.hold.clear()
    first = asyncio.ensure_future(group.submit(0))
    await started(store)
    later = [asyncio.ensure_future(group.submit(n)) for n in (2, 4, 6)]
    await asyncio.sleep(0)
    store.hold.set()
    await asyncio.gather(first, *later)
    assert store.calls == [[0], [2, 4], [6]]


async def test_an_items_error_is_raised_to_its_caller_alone() -> None:
    store = Store()
    group = GroupCommit(store, max_items=10)
    store.hold.clear()
    first = asyncio.ensure_future(group.submit(0))
    await started(store)
    odd, even = asyncio.ensure_future(group.submit(3)), asyncio.ensure_future(group.submit(4))
    await asyncio.sleep(0)
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
    group = GroupCommit(store, max_items=10)
    store.hold.clear()
    first = asyncio.ensure_future(group.submit(0))
    await started(store)
    gone, kept = asyncio.ensure_future(group.submit(2)), asyncio.ensure_future(group.submit(4))
    await asyncio.sleep(0)
    gone.cancel()
    store.hold.set()
    assert (await first, await kept) == (0, 40)
    assert store.calls == [[0], [4]]
