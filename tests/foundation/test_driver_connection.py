"""`app.db.driver_connection`: statements on the raw asyncpg connection belong to the session's
transaction, even when they come before any of SQLAlchemy's own (its adapter begins lazily)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_session_factory, driver_connection, outside_transaction

_INSERT = (
    "INSERT INTO service_processes (id, kind, hostname, pid, started_at, heartbeat_at) "
    "VALUES ($1, 'serve', 'test', 1, clock_timestamp(), clock_timestamp())"
)
_COUNT = "SELECT count(*) FROM service_processes WHERE id = $1"


async def test_a_first_statement_on_the_driver_is_rolled_back_with_the_session(
    engine: AsyncEngine,
) -> None:
    factory = create_session_factory(engine)
    row = uuid.uuid4()
    async with factory() as session:
        raw = await driver_connection(session)
        assert raw.is_in_transaction()
        await raw.execute(_INSERT, row)
        async with factory() as other:
            seen = await driver_connection(other)
            # Not committed: another connection does not see it yet.
            assert await seen.fetchval(_COUNT, row) == 0
            await other.rollback()
        await session.rollback()
    async with factory() as session:
        assert await (await driver_connection(session)).fetchval(_COUNT, row) == 0
        await session.rollback()


async def test_outside_a_transaction_the_driver_runs_each_statement_on_its_own(
    engine: AsyncEngine,
) -> None:
    factory = create_session_factory(engine)
    async with factory() as session:
        await outside_transaction(session)
        raw = await driver_connection(session)
        assert not raw.is_in_transaction()
        await session.rollback()
