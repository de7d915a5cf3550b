"""Fixtures of the recovery tests: a real Bakkt sandbox of their own, a Bakkt client, session
factories joined to the test's rolled-back transaction (or a real pool for concurrency), and a
fence that hides what other tests committed from the jobs under test.

The jobs claim every due transaction in the database, and tests of other packages leave
committed rows behind (their pool-backed tests). A test here therefore first makes sure the
jobs can only see its own rows: `isolate(...)` inside its rolled-back transaction, `fence(...)`
(row locks that SKIP LOCKED skips) for tests on a real pool.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.bakkt import BakktClient
from app.bakkt.setup import bakkt_config
from app.config import Settings
from app.core.metrics import Metrics
from app.db import create_session_factory
from bakkt_sandbox.testing import RunningSandbox, running_sandbox
from tests.recovery.helpers import Execute

Isolate = Callable[..., Awaitable[None]]


@pytest.fixture(scope="session")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    """A frozen clock (nothing moves unless a test says so); webhooks go nowhere unless a test
    points them at a running service."""
    async with running_sandbox(
        time_scale=0,
        webhook_url="",
        webhook_retry_schedule=[0.05, 0.1, 0.2],
        webhook_timeout=2.0,
    ) as sb:
        yield sb


@pytest.fixture(scope="session")
def rsettings(settings: Settings, sandbox: RunningSandbox) -> Settings:
    return settings.model_copy(
        update={
            "bakkt_base_url": sandbox.base_url,
            "bakkt_transfer_max_attempts": 2,
            "bakkt_retry_backoff_base": 0.01,
            "bakkt_retry_backoff_cap": 0.02,
            "bakkt_read_timeout": 2.0,
            # The rolled-back tests share one connection: one item at a time on it.
            "recovery_concurrency": 1,
        }
    )


@pytest.fixture(scope="session")
async def bakkt(rsettings: Settings) -> AsyncIterator[BakktClient]:
    async with BakktClient(bakkt_config(rsettings)) as client:
        yield client


@pytest.fixture(autouse=True)
async def _sandbox_left_clean(sandbox: RunningSandbox) -> AsyncIterator[None]:
    yield
    await sandbox.clear_faults()
    await sandbox.set_webhook_mode(url="", drop_rate=0.0)


@pytest.fixture
def party() -> str:
    """A party of this test alone: the sandbox outlives a test."""
    return f"r-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def factory(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    """What the jobs are handed: sessions inside the test's rolled-back transaction."""
    made = create_session_factory(connection)  # type: ignore[arg-type]
    made.configure(join_transaction_mode="create_savepoint")
    return made


@pytest.fixture
def live_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on the real pool: data is committed, so such tests use their own party refs."""
    return create_session_factory(engine)


@pytest.fixture
def sql(connection: AsyncConnection) -> Execute:
    """SQL inside the test's transaction (what `factory` sees)."""

    async def run(statement: str, params: dict[str, Any] | None = None) -> Any:
        result = await connection.execute(text(statement), params or {})
        return result.all() if result.returns_rows else None

    return run


@pytest.fixture
def live_sql(engine: AsyncEngine) -> Execute:
    """SQL committed at once (what `live_factory` sees)."""

    async def run(statement: str, params: dict[str, Any] | None = None) -> Any:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement), params or {})
            return result.all() if result.returns_rows else None

    return run


@pytest.fixture
def isolate(sql: Execute) -> Isolate:
    """`await isolate(party, ...)`: inside this test's rolled-back transaction, other parties'
    open transactions are no longer due and other parties are CLOSED, so the jobs see only this
    test's rows. Rolled back with the test."""

    async def run(*parties: str) -> None:
        mine = list(parties)
        await sql(
            "UPDATE transactions SET status = 'FAILED', next_check_at = NULL "
            "WHERE party_ref <> ALL(:mine) AND status IN ('SUBMITTING', 'UNKNOWN', 'PENDING')",
            {"mine": mine},
        )
        await sql(
            "UPDATE parties SET status = 'CLOSED' WHERE party_ref <> ALL(:mine)", {"mine": mine}
        )
        await sql(
            "UPDATE idempotency_keys SET locked_until = now() + interval '1 day', holder_id = NULL "
            "WHERE recovery_point = 'intent_written' AND party_ref <> ALL(:mine)",
            {"mine": mine},
        )
        await sql("DELETE FROM recovery_jobs")

    return run


@pytest.fixture
async def fence(engine: AsyncEngine) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    """`await fence(party, ...)`: row locks on every other party's open transaction, held by a
    connection of its own until the test ends, so claims (SKIP LOCKED) pass them by."""
    async with engine.connect() as conn:
        held = await conn.begin()

        async def run(*parties: str) -> None:
            await conn.execute(
                text(
                    "SELECT id FROM transactions WHERE party_ref <> ALL(:mine) "
                    "AND status IN ('SUBMITTING', 'UNKNOWN', 'PENDING') FOR UPDATE"
                ),
                {"mine": list(parties)},
            )

        try:
            yield run
        finally:
            await held.rollback()
