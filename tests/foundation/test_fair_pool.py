"""The connection pool's queue serves waiters in order: a returned connection goes to the longest
waiter, never to a request that arrived after it (app/db.py: FairQueue)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.util.concurrency import greenlet_spawn
from sqlalchemy.util.queue import Empty, Full

from app.config import Settings
from app.db import FairAsyncPool, FairQueue, create_engine


def _get(queue: FairQueue[str], timeout: float | None = 5.0) -> asyncio.Task[Any]:
    # The pool calls `get` from SQLAlchemy's greenlet, as here.
    return asyncio.create_task(greenlet_spawn(queue.get, True, timeout))


async def _until_waiting(queue: FairQueue[str], count: int) -> None:
    # Each waiter registers within a pass or two of the loop; bounded, not timed.
    for _ in range(100):
        if len(queue._waiters) == count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"expected {count} waiters, found {len(queue._waiters)}")


async def test_a_returned_item_goes_to_the_waiter_not_to_a_newcomer() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=2)
    waiter = _get(queue)
    await _until_waiting(queue, 1)
    queue.put_nowait("conn")
    # asyncio.Queue would let this call take the item promised to the waiter.
    with pytest.raises(Empty):
        queue.get_nowait()
    assert queue.qsize() == 0
    assert await waiter == "conn"


async def test_waiters_are_served_first_come_first_served() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=3)
    waiters = []
    for count in (1, 2, 3):
        waiters.append(_get(queue))
        await _until_waiting(queue, count)
    for item in ("a", "b", "c"):
        queue.put_nowait(item)
    assert [await w for w in waiters] == ["a", "b", "c"]


async def test_a_wait_that_times_out_is_empty_and_leaves_the_line() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=1)
    with pytest.raises(Empty):
        # Nothing is ever put: it times out whatever the machine's speed.
        await greenlet_spawn(queue.get, True, 0.01)
    queue.put_nowait("conn")
    assert queue.get_nowait() == "conn"


async def test_a_waiter_cancelled_after_the_hand_off_passes_the_item_on() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=2)
    first = _get(queue)
    await _until_waiting(queue, 1)
    second = _get(queue)
    await _until_waiting(queue, 2)
    queue.put_nowait("conn")
    # Cancelled before it ran again (a request cancelled at shutdown): the connection it was
    # handed must not be lost to the pool.
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == "conn"


async def test_a_full_queue_refuses_without_a_waiter() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=1)
    queue.put_nowait("a")
    with pytest.raises(Full):
        queue.put_nowait("b")
    assert queue.full()
    assert queue.get_nowait() == "a"


async def test_the_service_engine_uses_it(settings: Settings) -> None:
    limited = settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0})
    engine = create_engine(limited)
    try:
        assert isinstance(engine.pool, FairAsyncPool)

        async def one() -> int:
            async with engine.connect() as conn:
                return int((await conn.execute(text("SELECT 1"))).scalar_one())

        # Five at once through one connection: each waits its turn.
        assert await asyncio.gather(*(one() for _ in range(5))) == [1] * 5
    finally:
        await engine.dispose()
