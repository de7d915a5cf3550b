"""Fixtures of the protection tests: the app built with the settings a test names, joined to the
test's rolled-back transaction, and a Bakkt sandbox for the routes that call it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.auth.dev_token import mint_dev_token
from app.config import Settings
from app.db import create_session_factory
from app.main import create_app
from bakkt_sandbox.testing import RunningSandbox, running_sandbox


class FakeClock:
    """What the rate limiter reads as time.monotonic(); moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Service:
    app: FastAPI
    http: httpx.AsyncClient
    clock: FakeClock
    settings: Settings

    def headers(self, party: str, *, admin: bool = False) -> dict[str, str]:
        token = mint_dev_token(self.settings, party, admin=admin, ttl_seconds=600)
        return {"Authorization": f"Bearer {token}"}

    def internal(self) -> httpx.AsyncClient:
        """A client of what the internal listener (INTERNAL_PORT) serves."""
        transport = httpx.ASGITransport(app=self.app.state.internal_app)
        return httpx.AsyncClient(transport=transport, base_url="http://internal")


ServiceFactory = Callable[..., AbstractAsyncContextManager[Service]]


@pytest.fixture(scope="session")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(time_scale=0, webhook_url="") as sb:
        yield sb


@pytest.fixture
def service(
    settings: Settings, engine: AsyncEngine, connection: AsyncConnection, sandbox: RunningSandbox
) -> ServiceFactory:
    """`async with service(rate_limit_writes="2/minute") as svc:` (settings overrides)."""

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[Service]:
        # Parsed as the environment's values are (model_copy alone would not validate them);
        # APP_ENV apart, which would refuse the development secrets.
        parsed = Settings(  # type: ignore[call-arg]
            _env_file=None, **{k: v for k, v in overrides.items() if k != "app_env"}
        )
        update = {name: getattr(parsed, name) for name in overrides if name != "app_env"}
        if "app_env" in overrides:
            update["app_env"] = overrides["app_env"]
        configured = settings.model_copy(
            update={"bakkt_base_url": sandbox.base_url, "bakkt_read_timeout": 2.0, **update}
        )
        app = create_app(configured, engine=engine)
        clock = FakeClock()
        if app.state.rate_limits is not None:
            app.state.rate_limits.clock = clock
        async with app.router.lifespan_context(app):
            factory = create_session_factory(connection)  # type: ignore[arg-type]
            factory.configure(join_transaction_mode="create_savepoint")
            app.state.session_factory = factory
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                yield Service(app, http, clock, configured)

    return factory


@pytest.fixture
def party() -> str:
    return f"prot-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sql(connection: AsyncConnection) -> Callable[..., Any]:
    async def run(statement: str, params: dict[str, Any] | None = None) -> Any:
        result = await connection.execute(text(statement), params or {})
        return result.all() if result.returns_rows else None

    return run
