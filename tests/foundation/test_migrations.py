from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app import migrate
from app.models import Base
from tests.conftest import _asyncpg_dsn


@pytest.fixture
async def empty_engine(postgres_server_url: str) -> AsyncIterator[AsyncEngine]:
    """A database of its own, so tearing the schema down cannot disturb other tests."""
    name = f"fiat_onramp_migr_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_server_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    engine = create_async_engine(make_url(postgres_server_url).set(database=name))
    try:
        yield engine
    finally:
        await engine.dispose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def _table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return await connection.run_sync(_tables)


async def test_migrations_round_trip_head_base_head(empty_engine: AsyncEngine) -> None:
    engine = empty_engine
    await migrate.upgrade_async(engine, "head")
    assert await migrate.current_revision(engine) == migrate.head_revision()
    assert _tables_of_models() <= await _table_names(engine)
    await migrate.downgrade_async(engine, "base")
    assert await migrate.current_revision(engine) is None
    assert _tables_of_models() & await _table_names(engine) == set()
    await migrate.upgrade_async(engine, "head")
    assert await migrate.current_revision(engine) == migrate.head_revision()
    assert _tables_of_models() <= await _table_names(engine)


def _tables_of_models() -> set[str]:
    return set(Base.metadata.tables)


async def test_models_and_migrations_agree(engine: AsyncEngine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def _diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        diff = await connection.run_sync(_diff)
    assert diff == []
