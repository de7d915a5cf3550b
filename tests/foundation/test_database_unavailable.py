"""A Postgres that refuses for want of a resource (too many connections) is an outage, not a
bug: the service answers 503 with Retry-After instead of 500, and the webhook receiver re-raises
instead of storing a good event as unreadable."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from app.errors import is_database_unavailable


@pytest.fixture
async def refused_url(database_url: str) -> AsyncIterator[str]:
    """A login role allowed no connection at all: connecting fails with SQLSTATE 53300."""
    role = f"fiat_onramp_nolimit_{uuid.uuid4().hex[:8]}"
    url = make_url(database_url)
    admin = await asyncpg.connect(str(url.set(drivername="postgresql").render_as_string(False)))
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
        yield url.set(username=role, password=None).render_as_string(False)
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_too_many_connections_through_sqlalchemy_is_unavailable(refused_url: str) -> None:
    engine = create_async_engine(refused_url)
    try:
        with pytest.raises(DBAPIError) as caught:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    assert is_database_unavailable(caught.value)


async def test_too_many_connections_from_asyncpg_is_unavailable(refused_url: str) -> None:
    dsn = str(make_url(refused_url).set(drivername="postgresql").render_as_string(False))
    with pytest.raises(asyncpg.PostgresError) as caught:
        await asyncpg.connect(dsn)
    assert caught.value.sqlstate == "53300"
    assert is_database_unavailable(caught.value)


def test_a_wrong_statement_is_not_unavailable() -> None:
    assert not is_database_unavailable(asyncpg.exceptions.UndefinedTableError("no such table"))
