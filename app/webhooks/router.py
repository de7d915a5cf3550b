"""`POST /webhooks/bakkt`: Bakkt's events come in here (docs/bakkt-contract.md A6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.metrics import Metrics
from app.db import get_session
from app.errors import problem_responses
from app.webhooks import service
from app.webhooks.schemas import WebhookReceipt
from app.webhooks.verify import (
    REJECTIONS,
    VerifiedWebhook,
    WebhookTooLarge,
    verified_webhook,
    verifier_for,
)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # A malformed secret or allow-list entry stops the start instead of refusing every webhook.
    verifier_for(app)
    metrics: Metrics = app.state.metrics
    metrics.known_webhook_rejections([*(r.code for r in REJECTIONS), WebhookTooLarge.code])
    yield


router = APIRouter(tags=["webhooks"], lifespan=_lifespan)


@router.post(
    "/webhooks/bakkt",
    response_model=WebhookReceipt,
    summary="Receive a Bakkt webhook (FIAT_EVENT, PARTY_EVENT, BANK_ACCOUNT_LINK)",
    description=(
        "Verified on the raw body (Standard Webhooks HMAC; optionally a static token header "
        "`X-Webhook-Token` and a source-IP allow-list), stored once by `requestId`, then applied. "
        "Every verified delivery gets 200, including redeliveries and unreadable bodies (kept for "
        "an operator); a delivery that fails verification gets 401 and is not stored."
    ),
    responses=problem_responses(*REJECTIONS, WebhookTooLarge),
)
async def receive_bakkt_webhook(
    request: Request,
    delivery: Annotated[VerifiedWebhook, Depends(verified_webhook)],
    session: Annotated[AsyncSession, Depends(get_session)],
) -> WebhookReceipt:
    receipt = await service.receive(session, delivery)
    metrics: Metrics = request.app.state.metrics
    # A redelivery with another body is `conflict`, not a harmless duplicate.
    status = str(receipt.status).lower()
    outcome = "duplicate" if receipt.duplicate and status != "conflict" else status
    metrics.webhooks_received.labels(outcome).inc()
    return WebhookReceipt(
        request_id=receipt.request_id, duplicate=receipt.duplicate, status=receipt.status
    )
