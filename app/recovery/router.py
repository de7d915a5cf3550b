"""`GET /metrics`: every metric in Prometheus' text format (docs/operations.md#metrics)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response
from opentelemetry import context
from sqlalchemy.exc import SQLAlchemyError

from app.core.metrics import CONTENT_TYPE, Metrics, StaticCollector, gauge
from app.recovery.gauges import read_gauges

router = APIRouter(tags=["operations"])
log = logging.getLogger("app.recovery")

# The database's gauges must not hold a scrape (Prometheus' default timeout is 10 s).
GAUGE_TIMEOUT = 3.0


@router.get(
    "/metrics",
    summary="Request, Bakkt, webhook, recovery and database metrics (Prometheus text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Counters and gauges"}},
)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    families = []
    database_up = 1.0
    # The scrape has no span of its own (excluded from tracing): its statements would each be
    # a trace of one span every 30 s per pod.
    token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        async with request.app.state.session_factory() as session:
            families = await asyncio.wait_for(read_gauges(session), GAUGE_TIMEOUT)
            await session.rollback()
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        # The process's own metrics still answer; the database's gauges are absent meanwhile.
        database_up = 0.0
        log.warning("metrics: database gauges unavailable (%s)", type(exc).__name__)
    finally:
        context.detach(token)
    families.append(
        gauge("metrics_database_up", "1 when this scrape read the database gauges", database_up)
    )
    body = registry.render([StaticCollector(families)])
    return Response(body, media_type=CONTENT_TYPE)
