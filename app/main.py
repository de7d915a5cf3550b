"""The FastAPI application factory and the lifespan that owns the engine and outside clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app import migrate
from app.config import Settings, get_settings
from app.core.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from app.db import create_engine, create_session_factory
from app.errors import install_error_handlers
from app.health.router import router as health_router

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, engine: AsyncEngine | None = None) -> FastAPI:
    """Build the service. `engine` lets tests hand in one bound to their own database."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            owned_engine = engine is None
            app_engine = engine or create_engine(settings)
            if owned_engine:
                stack.push_async_callback(app_engine.dispose)
            app.state.engine = app_engine
            app.state.session_factory = create_session_factory(app_engine)
            yield

    app = FastAPI(
        title="fiat-onramp",
        version="0.1.0",
        summary="Link bank accounts, deposit and withdraw dollars through Bakkt's Fiat API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.schema_head = migrate.head_revision()
    install_error_handlers(app)
    app.include_router(health_router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
