"""`GET /metrics`: the in-process counters in Prometheus' text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from app.recovery.metrics import METRICS, Metrics, counter_family
from app.webhooks.verify import metrics_for

router = APIRouter(tags=["operations"])

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get(
    "/metrics",
    summary="Recovery and reconciliation counters (Prometheus text format)",
    response_class=PlainTextResponse,
    responses={200: {"content": {PROMETHEUS_TEXT: {}}, "description": "Counters and gauges"}},
)
async def metrics(request: Request) -> PlainTextResponse:
    registry: Metrics = getattr(request.app.state, "metrics", METRICS)
    webhooks = metrics_for(request.app)
    text = (
        registry.render()
        + counter_family(
            "webhook_rejected_total",
            "reason",
            webhooks.rejected,
            "Webhook deliveries refused before storing, by reason",
        )
        + counter_family(
            "webhook_deliveries_total",
            "outcome",
            webhooks.outcomes,
            "Webhook deliveries answered, by outcome (DUPLICATE for redeliveries)",
        )
    )
    return PlainTextResponse(text, media_type=PROMETHEUS_TEXT)
