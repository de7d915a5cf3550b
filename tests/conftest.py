"""Test infrastructure: a real Postgres (DATABASE_URL's server, or an embedded one), a throwaway
database per run migrated once with Alembic, and each test inside a rolled-back transaction."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from app import migrate
from app.config import Settings, normalize_database_url
from app.db import create_session_factory
from app.main import create_app

logging.getLogger("pgserver").setLevel(logging.WARNING)

REPO_ROOT = Path(__file__).resolve().parent.parent

# The sandbox's fixtures (`bakkt_sandbox`, `fresh_bakkt_sandbox`), as partners' CI uses them.
pytest_plugins = ["bakkt_sandbox.pytest_plugin"]


def _asyncpg_dsn(sqlalchemy_url: str) -> str:
    return str(make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(False))


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A Postgres server to create the run's database on (any database name)."""
    configured = os.environ.get("DATABASE_URL", "").strip()
    if configured:
        yield normalize_database_url(configured)
        return
    from app.embedded import start_embedded_postgres

    server = start_embedded_postgres(REPO_ROOT / ".data" / "test-postgres")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A throwaway database for this run, at the newest migration, dropped at the end."""
    name = f"fiat_onramp_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(postgres_server_url).set(database=name).render_as_string(False)
    engine = create_async_engine(url)
    try:
        await migrate.upgrade_async(engine)
    finally:
        await engine.dispose()
    yield url
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_server_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(_env_file=None, database_url=database_url, workers_enabled=False)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, pool_size=20, max_overflow=20)
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One connection per test, inside an outer transaction that is rolled back at the end."""
    async with engine.connect() as conn:
        outer = await conn.begin()
        try:
            yield conn
        finally:
            await outer.rollback()


@pytest.fixture
async def session(connection: AsyncConnection) -> AsyncIterator[AsyncSession]:
    # create_savepoint: a commit or rollback inside the code under test stays inside the
    # outer transaction, so fixtures survive it and nothing outlives the test.
    async with AsyncSession(
        bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    ) as session:
        yield session


@pytest.fixture
async def client(
    settings: Settings, engine: AsyncEngine, connection: AsyncConnection
) -> AsyncIterator[httpx.AsyncClient]:
    """The app over ASGI, its sessions joined to the test's rolled-back transaction."""
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        app.state.session_factory = create_session_factory(connection)  # type: ignore[arg-type]
        app.state.session_factory.configure(join_transaction_mode="create_savepoint")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


@pytest.fixture
async def live_client(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The app over ASGI with its own connection pool, for tests of concurrency (row locks,
    unique claims) that one shared connection cannot show. Data is committed: such tests use
    their own party refs."""
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http
