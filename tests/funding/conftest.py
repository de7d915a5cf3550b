"""Fixtures of the funding API tests: one real Bakkt sandbox per run, the app over ASGI against
Postgres (rolled back per test, or a real pool for concurrency), and consumer tokens."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.auth.dev_token import mint_dev_token
from app.bakkt import BakktClient
from app.bakkt.setup import bakkt_config
from app.config import Settings
from app.db import create_session_factory
from app.main import create_app
from bakkt_sandbox.testing import RunningSandbox, running_sandbox
from tests.funding.helpers import Execute


@pytest.fixture(scope="session")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    """A frozen clock (nothing settles unless a test says so) and no webhook target: the
    webhook receiver is tested elsewhere; here a test plays the webhook by writing the row."""
    async with running_sandbox(time_scale=0, webhook_url="") as sb:
        yield sb


@pytest.fixture(scope="session")
def api_settings(settings: Settings, sandbox: RunningSandbox) -> Settings:
    return settings.model_copy(
        update={
            "bakkt_base_url": sandbox.base_url,
            "bakkt_transfer_max_attempts": 2,
            "bakkt_retry_backoff_base": 0.01,
            "bakkt_retry_backoff_cap": 0.02,
            "bakkt_read_timeout": 2.0,
        }
    )


@pytest.fixture(scope="session")
async def bakkt(api_settings: Settings) -> AsyncIterator[BakktClient]:
    async with BakktClient(bakkt_config(api_settings)) as client:
        yield client


@pytest.fixture(autouse=True)
async def _no_faults_left(sandbox: RunningSandbox) -> AsyncIterator[None]:
    yield
    await sandbox.clear_faults()


@pytest.fixture
def party() -> str:
    """A party of this test alone: the sandbox and the pool-backed tests outlive a test."""
    return f"p-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
async def shared_app(
    api_settings: Settings, engine: AsyncEngine, bakkt: BakktClient
) -> AsyncIterator[FastAPI]:
    """One app for the run: building one per test costs more than most tests themselves."""
    app = create_app(api_settings, engine=engine, bakkt=bakkt)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def api(shared_app: FastAPI, connection: AsyncConnection) -> AsyncIterator[httpx.AsyncClient]:
    """The app over ASGI, its sessions joined to the test's rolled-back transaction."""
    factory = create_session_factory(connection)  # type: ignore[arg-type]
    factory.configure(join_transaction_mode="create_savepoint")
    shared_app.state.session_factory = factory
    transport = httpx.ASGITransport(app=shared_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture(scope="session")
async def live_app(
    api_settings: Settings, engine: AsyncEngine, bakkt: BakktClient
) -> AsyncIterator[FastAPI]:
    app = create_app(api_settings, engine=engine, bakkt=bakkt)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def live_api(live_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with a real connection pool, for concurrency: its data is committed."""
    transport = httpx.ASGITransport(app=live_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
async def api_with(
    api_settings: Settings, engine: AsyncEngine, connection: AsyncConnection
) -> AsyncIterator[Callable[..., Awaitable[httpx.AsyncClient]]]:
    """Builds the app with other settings (its own Bakkt client), on the test's connection."""
    async with contextlib.AsyncExitStack() as stack:

        async def build(**update: Any) -> httpx.AsyncClient:
            app = create_app(api_settings.model_copy(update=update), engine=engine)
            await stack.enter_async_context(app.router.lifespan_context(app))
            factory = create_session_factory(connection)  # type: ignore[arg-type]
            factory.configure(join_transaction_mode="create_savepoint")
            app.state.session_factory = factory
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
            )

        yield build


TokenFactory = Callable[..., dict[str, str]]


@pytest.fixture
def auth(api_settings: Settings) -> TokenFactory:
    """`auth("alice")` -> headers with alice's token; `auth("x", admin=True)` for the back end."""

    def make(party_ref: str, *, admin: bool = False, ttl: int = 600) -> dict[str, str]:
        token = mint_dev_token(api_settings, party_ref, admin=admin, ttl_seconds=ttl)
        return {"Authorization": f"Bearer {token}"}

    return make


@pytest.fixture
def sql(connection: AsyncConnection) -> Execute:
    """Run SQL inside the test's transaction (what the app sees through `api`)."""

    async def run(statement: str, params: dict[str, Any] | None = None) -> Any:
        return await connection.execute(text(statement), params or {})

    return run


@pytest.fixture
def live_sql(engine: AsyncEngine) -> Execute:
    """Run SQL and commit (what the app sees through `live_api`)."""

    async def run(statement: str, params: dict[str, Any] | None = None) -> Any:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement), params or {})
            return result.all() if result.returns_rows else None

    return run
