"""This process's registration: an id, and a heartbeat renewed in Postgres while it runs.

A consumer's idempotency claim names the process holding it. A process that dies (SIGKILL, OOM,
a lost node) stops renewing, and `PROCESS_STALE_AFTER` seconds later every claim it held may be
taken over by the next retry, instead of waiting out a lease sized for the slowest request.

Believing a holder gone is only ever a belief: a process whose database connection stalls past
the stale bound is still running. Nothing unsafe follows, because the taker resumes with the
claim's own Bakkt idempotency key (Bakkt answers the second send with the first transfer) and an
intent is written once per claim (`app.idempotency.repository.set_intent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from opentelemetry import context
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.processes import repository as repo

log = logging.getLogger("app.processes")


def _own_engine(url: URL, timeout: float) -> AsyncEngine:
    """One connection of the heartbeat's own. On the requests' pool a busy process (every
    connection taken, requests queueing for one) could not renew, and would look dead exactly
    when it is working hardest: the fault suite's Bakkt outage showed it."""
    return create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_pre_ping=True,
        pool_timeout=timeout,
        connect_args={
            "timeout": timeout,
            "command_timeout": timeout,
            "server_settings": {
                "application_name": "fiat-onramp-heartbeat",
                "statement_timeout": str(int(timeout * 1000)),
            },
        },
    )


class ProcessHeartbeat:
    """Register at `start()`, renew every `interval` seconds, mark stopped at `stop()`, on a
    connection of its own to the database at `url`."""

    def __init__(self, url: URL, *, kind: str, interval: float) -> None:
        self.id = uuid.uuid4()
        self.kind = kind
        self.interval = interval
        # A renewal slower than one interval is as good as a missed one.
        self._engine = _own_engine(url, timeout=max(interval, 1.0))
        self._factory: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self._engine, expire_on_commit=False
        )
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def beat(self) -> bool:
        """One renewal; False (logged once per outage) when the database did not take it."""
        # Not traced (like the /metrics scrape): with tracing on, every renewal would be a
        # trace of its own every PROCESS_HEARTBEAT_INTERVAL per process.
        token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            return await self._beat()
        finally:
            context.detach(token)

    async def _beat(self) -> bool:
        try:
            async with self._factory() as session:
                await repo.beat(
                    session, self.id, kind=self.kind, hostname=socket.gethostname(), pid=os.getpid()
                )
                await session.commit()
        except Exception as exc:
            if not self._failing:
                log.warning(
                    "process heartbeat %s not renewed (%s); its claims may be taken over",
                    self.id,
                    type(exc).__name__,
                )
            self._failing = True
            return False
        if self._failing:
            log.warning("process heartbeat %s renewed again", self.id)
        self._failing = False
        return True

    async def start(self) -> None:
        """Register (without failing the start when the database is down) and keep renewing."""
        if self._task is not None:
            raise RuntimeError("heartbeat already started")
        await self.beat()
        self._task = asyncio.create_task(self._loop(), name=f"heartbeat:{self.id}")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.beat()

    async def stop(self) -> None:
        """After the last request: its claims are stale at once for whoever retries them."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            async with self._factory() as session:
                await repo.mark_stopped(session, self.id)
                await session.commit()
        except Exception as exc:
            log.warning("process %s not marked stopped: %s", self.id, type(exc).__name__)
        finally:
            await self._engine.dispose()
