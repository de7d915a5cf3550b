"""Fixtures of the admin tests: the app over ASGI against Postgres (each test rolled back) with a
real Bakkt sandbox of their own, admin and consumer tokens, and SQL inside the test's
transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
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
from tests.admin.helpers import Execute

ADMIN = "ops-alice"


@pytest.fixture(scope="session")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    """A frozen clock: nothing settles unless a test says so; webhooks go nowhere (a test
    plays them through the receiver)."""
    async with running_sandbox(time_scale=0, webhook_url="") as sb:
        yield sb


@pytest.fixture(scope="session")
def admin_settings(settings: Settings, sandbox: RunningSandbox) -> Settings:
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
async def bakkt(admin_settings: Settings) -> AsyncIterator[BakktClient]:
    async with BakktClient(bakkt_config(admin_settings)) as client:
        yield client


@pytest.fixture(autouse=True)
async def _no_faults_left(sandbox: RunningSandbox) -> AsyncIterator[None]:
    yield
    await sandbox.clear_faults()


@pytest.fixture(scope="session")
async def admin_app(
    admin_settings: Settings, engine: AsyncEngine, bakkt: BakktClient
) -> AsyncIterator[FastAPI]:
    app = create_app(admin_settings, engine=engine, bakkt=bakkt)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def api(admin_app: FastAPI, connection: AsyncConnection) -> AsyncIterator[httpx.AsyncClient]:
    """The app over ASGI, its sessions joined to the test's rolled-back transaction."""
    factory = create_session_factory(connection)  # type: ignore[arg-type]
    factory.configure(join_transaction_mode="create_savepoint")
    admin_app.state.session_factory = factory
    transport = httpx.ASGITransport(app=admin_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
def party() -> str:
    """A party of this test alone: the sandbox and committed rows outlive a test."""
    return f"a-{uuid.uuid4().hex[:12]}"


TokenFactory = Callable[..., dict[str, str]]


@pytest.fixture
def token(admin_settings: Settings) -> TokenFactory:
    """`token("alice")`: a consumer's headers; `token(ADMIN, admin=True)`: an operator's."""

    def make(subject: str, *, admin: bool = False) -> dict[str, str]:
        minted = mint_dev_token(admin_settings, subject, admin=admin, ttl_seconds=600)
        return {"Authorization": f"Bearer {minted}"}

    return make


@pytest.fixture
def ops(token: TokenFactory) -> dict[str, str]:
    return token(ADMIN, admin=True)


@pytest.fixture
def sql(connection: AsyncConnection) -> Execute:
    """SQL inside the test's transaction (what `api` sees)."""

    async def run(statement: str, params: dict[str, Any] | None = None) -> Any:
        result = await connection.execute(text(statement), params or {})
        return result.all() if result.returns_rows else None

    return run


@pytest.fixture
def live_sql(engine: AsyncEngine) -> Execute:
    """SQL committed at once (what the command line, with its own engine, sees)."""

    async def run(statement: str, params: dict[str, Any] | None = None) -> Any:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement), params or {})
            return result.all() if result.returns_rows else None

    return run
