"""The FastAPI application factory and the lifespan that owns the engine and outside clients."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import BaseRoute

from app import migrate
from app.admin.router import router as admin_router
from app.bakkt.client import BakktClient
from app.bakkt.setup import bakkt_breaker, bakkt_config
from app.config import AppEnv, Settings, get_settings
from app.core import shutdown, tracing
from app.core.http_security import SecurityHeadersMiddleware, default_headers, install_cors
from app.core.listeners import DOCS_PREFIX, InternalListener, ListenerGate
from app.core.logs import register_secrets
from app.core.metrics import METRICS, Metrics, worker_exited
from app.core.middleware import (
    BodySizeLimitMiddleware,
    RequestIdMiddleware,
    RequestObservationMiddleware,
)
from app.core.ratelimit import RATE_LIMITED, RateLimits
from app.db import create_engine, create_session_factory
from app.demo.router import install_demo
from app.docs_assets import install_docs
from app.errors import install_error_handlers
from app.events.hub import EventHub
from app.events.openapi import declare_event_webhooks
from app.events.router import router as events_router
from app.funding.router import router as funding_router
from app.health.router import router as health_router
from app.partner_webhooks.router import router as partner_webhooks_router
from app.partner_webhooks.service import register_settings_endpoints
from app.processes.service import ProcessHeartbeat
from app.recovery.router import router as recovery_router
from app.recovery.worker import Workers
from app.webhooks.router import router as webhooks_router

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    engine: AsyncEngine | None = None,
    bakkt: BakktClient | None = None,
    metrics: Metrics | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build the service. `engine` and `bakkt` let tests hand in their own; the app then leaves
    closing them to the caller."""
    settings = settings or get_settings()
    metrics = metrics or METRICS
    register_secrets(settings.secret_values())
    tracer_provider = tracer_provider or tracing.setup_tracing()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            owned_engine = engine is None
            app_engine = engine or create_engine(settings)
            if owned_engine:
                stack.push_async_callback(app_engine.dispose)
            if tracer_provider is not None:
                tracing.instrument_engine(app_engine, tracer_provider)
                # Spans still batched when the process stops are sent, not dropped.
                stack.callback(tracer_provider.force_flush)
            # Last out: a stopping worker's live gauges leave the multiprocess sum.
            stack.callback(worker_exited)
            app.state.engine = app_engine
            app.state.session_factory = create_session_factory(app_engine)
            # Before the first request, so none of this process's events predates its endpoints.
            await register_settings_endpoints(app.state.session_factory, settings)
            if bakkt is None:
                app.state.bakkt = await stack.enter_async_context(
                    BakktClient(
                        bakkt_config(settings), breaker=bakkt_breaker(settings), metrics=metrics
                    )
                )
            else:
                app.state.bakkt = bakkt
            # One per process: every SSE stream of this process hangs off its one LISTEN.
            # Its reads (and the streams' backlogs) are of committed rows only: on the engine
            # itself, whatever session factory the requests are given.
            app.state.event_reads = create_session_factory(app_engine)
            hub = EventHub(
                app.state.event_reads,
                app_engine.url,
                poll_interval=settings.events_stream_poll_interval,
            )
            app.state.event_hub = hub
            stack.push_async_callback(hub.close)
            draining_watch = asyncio.create_task(_close_on_drain(app, hub))
            stack.callback(draining_watch.cancel)
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
                    app.state.session_factory,
                    app.state.bakkt,
                    settings,
                    metrics=metrics,
                    process_id=heartbeat.id,
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
    app.state.metrics = metrics
    metrics.build(app.version, os.environ.get("FIAT_ONRAMP_REVISION", "unknown"))
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
    # The party's pages and stream per party, the back end's catch-up per admin subject.
    app.include_router(events_router, **RATE_LIMITED)
    app.include_router(partner_webhooks_router)
    declare_event_webhooks(app)
    if settings.app_env is AppEnv.DEVELOPMENT:
        # It hands out tokens for any party to anyone who asks: never in production.
        install_demo(app)
    metrics.known_routes(_declared_responses(app))
    if app.state.rate_limits is not None:
        app.state.rate_limits.bind_routes(app.routes)
    # Added innermost first: a request meets RequestId, the request metrics and access line,
    # SecurityHeaders, CORS (so that a browser app can read every answer below it), the
    # shutdown cut, the listener gate, then the body limit.
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
    # Inside the request id (its access line carries it), outside everything that answers on
    # its own (the body limit's 413, the shutdown cut's 503, CORS preflights), so each is counted.
    app.add_middleware(RequestObservationMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)
    if tracer_provider is not None:
        tracing.instrument_app(app, tracer_provider)
    # What the internal listener serves (INTERNAL_PORT): this app, its requests marked.
    app.state.internal_app = InternalListener(app)
    return app


async def _close_on_drain(app: FastAPI, hub: EventHub) -> None:
    draining: asyncio.Event = app.state.draining
    await draining.wait()
    await hub.close()


def _declared_responses(app: FastAPI) -> list[tuple[str, str, list[int]]]:
    """Each route's template, methods and the statuses it declares. Included routers are
    walked (FastAPI keeps them nested), without building the OpenAPI document."""
    found: list[tuple[str, str, list[int]]] = []

    def walk(routes: Sequence[BaseRoute], prefix: str) -> None:
        for route in routes:
            included = getattr(route, "original_router", None)
            if included is not None:
                context = getattr(route, "include_context", None)
                walk(included.routes, prefix + str(getattr(context, "prefix", "") or ""))
            elif isinstance(route, APIRoute):
                statuses = [route.status_code or 200]
                statuses += [int(code) for code in route.responses if str(code).isdigit()]
                found.extend(
                    (prefix + route.path, m, statuses) for m in sorted(route.methods or ())
                )

    walk(app.routes, "")
    return found


async def _stop_workers(app: FastAPI, workers: Workers, settings: Settings) -> None:
    """After the requests drained: what is left of the shutdown budget for the current cycle."""
    deadline: float | None = app.state.drain_deadline
    grace = 5.0
    if deadline is not None:
        grace = max(1.0, deadline - asyncio.get_running_loop().time())
    await workers.stop(grace=min(grace, settings.shutdown_timeout))
