"""The FastAPI application factory and the lifespan that owns the engine and outside clients."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app import migrate
from app.admin.router import router as admin_router
from app.bakkt.client import BakktClient
from app.bakkt.setup import bakkt_breaker, bakkt_config
from app.config import Settings, get_settings
from app.core import shutdown
from app.core.http_security import SecurityHeadersMiddleware, default_headers, install_cors
from app.core.listeners import DOCS_PREFIX, InternalListener, ListenerGate
from app.core.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from app.core.ratelimit import RATE_LIMITED, RateLimits
from app.db import create_engine, create_session_factory
from app.docs_assets import install_docs
from app.errors import install_error_handlers
from app.funding.router import router as funding_router
from app.health.router import router as health_router
from app.processes.service import ProcessHeartbeat
from app.recovery.metrics import METRICS, watch_bakkt
from app.recovery.router import router as recovery_router
from app.recovery.worker import Workers
from app.webhooks.router import router as webhooks_router

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    engine: AsyncEngine | None = None,
    bakkt: BakktClient | None = None,
) -> FastAPI:
    """Build the service. `engine` and `bakkt` let tests hand in their own; the app then leaves
    closing them to the caller."""
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
            if bakkt is None:
                app.state.bakkt = await stack.enter_async_context(
                    BakktClient(bakkt_config(settings), breaker=bakkt_breaker(settings))
                )
            else:
                app.state.bakkt = bakkt
            watch_bakkt(app.state.metrics, app.state.bakkt)
            heartbeat = ProcessHeartbeat(
                app_engine.url,
                kind="serve",
                interval=settings.process_heartbeat_interval,
            )
            await heartbeat.start()
            # Marked stopped after the workers stop and the last request is answered.
            stack.push_async_callback(heartbeat.stop)
            app.state.heartbeat = heartbeat
            workers: Workers | None = None
            if settings.workers_enabled:
                # Stopped before the client and the engine close (the stack unwinds in reverse).
                workers = Workers.for_service(
                    app.state.session_factory, app.state.bakkt, settings, metrics=app.state.metrics
                )
                workers.start()
                stack.push_async_callback(_stop_workers, app, workers, settings)
            loop = asyncio.get_running_loop()

            def drain() -> None:
                app.state.drain_deadline = loop.time() + settings.shutdown_timeout
                app.state.draining.set()
                if workers is not None:
                    # No new cycle; the one in hand finishes while the requests drain.
                    workers.request_stop()

            def drain_soon() -> None:
                loop.call_soon_threadsafe(drain)

            stack.callback(shutdown.on_terminate(drain_soon))
            # Without a signal (a test, an embedding program) draining starts here.
            stack.callback(app.state.draining.set)
            yield

    app = FastAPI(
        title="fiat-onramp",
        version="0.1.0",
        summary="Link bank accounts, deposit and withdraw dollars through Bakkt's Fiat API.",
        lifespan=lifespan,
        # Served from the service's own files (install_docs), not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    app.state.settings = settings
    app.state.heartbeat = None
    app.state.metrics = METRICS
    app.state.schema_head = migrate.head_revision()
    # Set at SIGTERM (app/serving.py): long-lived responses (event streams) end when it is.
    app.state.draining = asyncio.Event()
    app.state.drain_deadline = None
    app.state.rate_limits = RateLimits(settings) if settings.rate_limit_enabled else None
    install_error_handlers(app)
    app.include_router(health_router)
    # Per party and per route; webhook intake, health and metrics are not (they have no party).
    app.include_router(funding_router, **RATE_LIMITED)
    app.include_router(webhooks_router)
    app.include_router(recovery_router)
    # The partner's operators (admin scope, no party): not limited per party.
    app.include_router(admin_router)
    if app.state.rate_limits is not None:
        app.state.rate_limits.bind_routes(app.routes)
    # Added innermost first: a request meets RequestId, SecurityHeaders, CORS (so that a
    # browser app can read every answer below it), the shutdown cut, the listener gate, then
    # the body limit.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_request_body_bytes,
        own_limit_paths=frozenset({"/webhooks/bakkt"}),
    )
    if settings.internal_port is not None or not (
        settings.ops_routes_public and settings.docs_enabled
    ):
        app.add_middleware(
            ListenerGate, ops_public=settings.ops_routes_public, docs_enabled=settings.docs_enabled
        )
    app.add_middleware(shutdown.ShutdownCutMiddleware, draining=app.state.draining)
    install_cors(app, settings)
    app.add_middleware(
        SecurityHeadersMiddleware,
        headers=default_headers(settings),
        cacheable_prefixes=(DOCS_PREFIX,),
    )
    app.add_middleware(RequestIdMiddleware)
    # What the internal listener serves (INTERNAL_PORT): this app, its requests marked.
    app.state.internal_app = InternalListener(app)
    return app


async def _stop_workers(app: FastAPI, workers: Workers, settings: Settings) -> None:
    """After the requests drained: what is left of the shutdown budget for the current cycle."""
    deadline: float | None = app.state.drain_deadline
    grace = 5.0
    if deadline is not None:
        grace = max(1.0, deadline - asyncio.get_running_loop().time())
    await workers.stop(grace=min(grace, settings.shutdown_timeout))
