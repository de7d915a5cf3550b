"""The sequencer: gives committed events their public order (`seq`), after their commit.

An identity or a sequence taken at insert time is not commit order: T1 inserts (local_id 5),
T2 inserts (6) and commits, a reader pages past 6, then T1 commits and its 5 is behind the
reader's cursor for ever. So readers never see `local_id`; the sequencer, one at a time across
every replica (an advisory lock), numbers the rows it can see, which are committed ones, above
every seq given before. T1's row, committed late, is numbered late, after T2's, and a reader that
has passed seq N never misses a row. docs/events.md has the reasoning and the N-replica case.

It runs as one of the recovery workers' jobs, woken at once by the `events_pending`
notification the insert trigger sends at each writer's commit, with a poll as the fallback.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.events import repository
from app.events.listen import Listener

SessionFactory = async_sessionmaker[AsyncSession]


async def sequence_pending(factory: SessionFactory, *, batch: int) -> int:
    """One numbering run in its own short transaction; how many events it numbered."""
    async with factory() as session:
        numbered, _ = await repository.number_pending(session, batch=batch)
        await session.commit()
    return numbered


class Sequencer:
    """The job's state: a LISTEN on `events_pending` (its own connection) that sets `wake`."""

    def __init__(
        self, factory: SessionFactory, url: URL | str, *, batch: int, min_gap: float = 0.0
    ) -> None:
        self.factory = factory
        self.batch = batch
        self.min_gap = min_gap
        self.wake = asyncio.Event()
        self.listener = Listener(url, "events_pending", self._pending, timeout=5.0)
        self._last_run = -float("inf")

    def _pending(self, _payload: str) -> None:
        self.wake.set()

    async def cycle(self) -> int:
        await self.listener.ensure()
        # Under load every commit notifies: runs at most every `min_gap`, each numbering
        # everything committed meanwhile, instead of one run (four round trips) per commit.
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._last_run + self.min_gap - loop.time()))
        self._last_run = loop.time()
        # Cleared before numbering: a commit during the run wakes the next one at once.
        self.wake.clear()
        return await sequence_pending(self.factory, batch=self.batch)

    async def close(self) -> None:
        await self.listener.close()
