"""Fixtures of the webhook tests: the app with its own settings, joined to the test's
rolled-back transaction like the root `client` fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.core.metrics import Metrics
from app.db import create_session_factory
from app.main import create_app


@dataclass(frozen=True)
class Harness:
    http: httpx.AsyncClient
    app: FastAPI


HarnessFactory = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture
def harness(settings: Settings, engine: AsyncEngine, connection: AsyncConnection) -> HarnessFactory:
    """`async with harness(client_ip=..., webhook_static_token=...) as h:` (settings overrides)"""

    @asynccontextmanager
    async def factory(client_ip: str = "127.0.0.1", **overrides: Any) -> AsyncIterator[Harness]:
        app = create_app(settings.model_copy(update=overrides), engine=engine, metrics=Metrics())
        async with app.router.lifespan_context(app):
            app.state.session_factory = create_session_factory(connection)  # type: ignore[arg-type]
            app.state.session_factory.configure(join_transaction_mode="create_savepoint")
            transport = httpx.ASGITransport(app=app, client=(client_ip, 4711))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                yield Harness(http, app)

    return factory


@pytest.fixture
def session_factory(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    """What `rematch_parked` is handed, joined to the test's rolled-back transaction."""
    factory = create_session_factory(connection)  # type: ignore[arg-type]
    factory.configure(join_transaction_mode="create_savepoint")
    return factory
