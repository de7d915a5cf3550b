"""HTTP only: the admin routes of partner webhook endpoints and their delivery log."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.dependencies import AdminScopeRequired, require_admin
from app.auth.tokens import AuthenticationRequired, Principal
from app.core.json_body import DuplicateField, UnstorableText, sound_json_body
from app.db import get_session
from app.errors import problem_responses
from app.funding.router import ValidationFailed
from app.partner_webhooks import schemas
from app.partner_webhooks.errors import (
    EndpointNotFound,
    EventFiltered,
    EventNotFound,
    InvalidRedelivery,
    InvalidWebhookSecret,
    InvalidWebhookUrl,
    ManagedBySettings,
    RedeliveryTooLarge,
    TargetNotAllowed,
    UnknownEventType,
    WebhookSecretRequired,
)
from app.partner_webhooks.service import EndpointView, WebhookEndpointService

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["partner webhooks"])

# ValidationFailed: FastAPI's own 422 for a bad path or query, declared as the problem it is.
_AUTH = (AuthenticationRequired, AdminScopeRequired, ValidationFailed)
_BODY = (DuplicateField, UnstorableText, UnknownEventType)

EndpointId = Annotated[uuid.UUID, Path(alias="endpointId")]


def get_service(
    request: Request,
    session: Annotated[AsyncSession, Depends(get_session)],
    _admin: Annotated[Principal, Depends(require_admin)],
) -> WebhookEndpointService:
    return WebhookEndpointService(session, request.app.state.settings)


Service = Annotated[WebhookEndpointService, Depends(get_service)]


def _render(view: EndpointView) -> schemas.Endpoint:
    e = view.endpoint
    counts = None
    if view.counts is not None:
        pending = view.counts.get("PENDING", (0, None))
        counts = schemas.DeliveryCounts(
            pending=pending[0],
            delivered=view.counts.get("DELIVERED", (0, None))[0],
            oldest_pending_at=pending[1],
        )
    return schemas.Endpoint(
        id=e.id,
        url=e.url,
        source=e.source,
        description=e.description,
        event_types=e.event_types,
        secret_fingerprints=view.fingerprints,
        status=e.status,
        disabled_reason=e.disabled_reason,
        disabled_at=e.disabled_at,
        failing_since=e.failing_since,
        last_success_at=e.last_success_at,
        last_failure_at=e.last_failure_at,
        created_at=e.created_at,
        deliveries=counts,
    )


@router.post(
    "",
    status_code=201,
    summary="Add a webhook endpoint",
    response_model=schemas.Endpoint,
    response_model_by_alias=True,
    dependencies=[Depends(sound_json_body)],
    responses=problem_responses(
        *_AUTH,
        *_BODY,
        InvalidWebhookUrl,
        TargetNotAllowed,
        InvalidWebhookSecret,
        WebhookSecretRequired,
    ),
)
async def create_endpoint(
    body: Annotated[schemas.EndpointCreate, Body()], service: Service
) -> schemas.Endpoint:
    view = await service.create(
        url=body.url,
        description=body.description,
        event_types=[str(t) for t in body.event_types] if body.event_types is not None else None,
        secrets=body.secrets,
    )
    return _render(view)


@router.get(
    "",
    summary="List webhook endpoints (from settings and added)",
    response_model=schemas.EndpointList,
    response_model_by_alias=True,
    responses=problem_responses(*_AUTH),
)
async def list_endpoints(service: Service) -> schemas.EndpointList:
    return schemas.EndpointList(data=[_render(v) for v in await service.list_all()])


@router.get(
    "/{endpointId}",
    summary="One webhook endpoint, with its pending and delivered counts",
    response_model=schemas.Endpoint,
    response_model_by_alias=True,
    responses=problem_responses(*_AUTH, EndpointNotFound),
)
async def get_endpoint(endpoint_id: EndpointId, service: Service) -> schemas.Endpoint:
    return _render(await service.get(endpoint_id))


@router.patch(
    "/{endpointId}",
    summary="Change an endpoint's description, event-type filter or secrets",
    response_model=schemas.Endpoint,
    response_model_by_alias=True,
    dependencies=[Depends(sound_json_body)],
    responses=problem_responses(
        *_AUTH,
        *_BODY,
        EndpointNotFound,
        InvalidWebhookSecret,
        WebhookSecretRequired,
        ManagedBySettings,
    ),
)
async def update_endpoint(
    endpoint_id: EndpointId, body: Annotated[schemas.EndpointUpdate, Body()], service: Service
) -> schemas.Endpoint:
    view = await service.update(
        endpoint_id,
        fields=set(body.model_fields_set),
        description=body.description,
        event_types=[str(t) for t in body.event_types] if body.event_types is not None else None,
        secrets=body.secrets,
    )
    return _render(view)


@router.post(
    "/{endpointId}/disable",
    summary="Stop delivering to an endpoint (its events are kept)",
    response_model=schemas.Endpoint,
    response_model_by_alias=True,
    responses=problem_responses(*_AUTH, EndpointNotFound),
)
async def disable_endpoint(endpoint_id: EndpointId, service: Service) -> schemas.Endpoint:
    return _render(await service.disable(endpoint_id))


@router.post(
    "/{endpointId}/enable",
    summary="Deliver to an endpoint again, from where it stopped",
    response_model=schemas.Endpoint,
    response_model_by_alias=True,
    responses=problem_responses(*_AUTH, EndpointNotFound, ManagedBySettings),
)
async def enable_endpoint(endpoint_id: EndpointId, service: Service) -> schemas.Endpoint:
    return _render(await service.enable(endpoint_id))


@router.post(
    "/{endpointId}/redeliveries",
    status_code=202,
    summary="Send one event, or every event of a time range, to this endpoint again",
    response_model=schemas.RedeliveryAccepted,
    response_model_by_alias=True,
    dependencies=[Depends(sound_json_body)],
    responses=problem_responses(
        *_AUTH,
        *_BODY,
        EndpointNotFound,
        EventNotFound,
        EventFiltered,
        InvalidRedelivery,
        RedeliveryTooLarge,
    ),
)
async def redeliver(
    endpoint_id: EndpointId, body: Annotated[schemas.RedeliveryRequest, Body()], service: Service
) -> schemas.RedeliveryAccepted:
    queued = await service.redeliver(
        endpoint_id, event_id=body.event_id, since=body.since, until=body.until
    )
    return schemas.RedeliveryAccepted(events=queued)


@router.get(
    "/{endpointId}/attempts",
    summary="The delivery log: every attempt, newest first",
    response_model=schemas.AttemptPage,
    response_model_by_alias=True,
    responses=problem_responses(*_AUTH, EndpointNotFound),
)
async def list_attempts(
    endpoint_id: EndpointId,
    service: Service,
    before: Annotated[str | None, Query(pattern=r"^[1-9][0-9]{0,17}$")] = None,
    event_id: Annotated[
        str | None, Query(alias="eventId", max_length=64, pattern=r"^evt_[0-9A-Za-z]{1,60}$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> schemas.AttemptPage:
    rows, older = await service.attempts(
        endpoint_id,
        before=int(before) if before is not None else None,
        event_id=event_id,
        limit=limit,
    )
    return schemas.AttemptPage(
        data=[
            schemas.DeliveryAttempt(
                id=r.id,
                event_id=r.event_id,
                party_ref=r.party_ref,
                attempt=r.attempt,
                attempted_at=r.attempted_at,
                outcome=r.outcome,
                status_code=r.status_code,
                latency_ms=r.latency_ms,
                error=r.error,
                delivery_state=r.state,
            )
            for r in rows
        ],
        next=str(older) if older is not None else None,
    )
