"""The OpenAPI document's `webhooks`: what the partner's endpoints receive, one entry per event
type, with the same payload as the catch-up pages and the stream."""

from __future__ import annotations

from typing import Any, get_args

from fastapi import FastAPI

from app.events.models import EventType
from app.events.schemas import (
    BankAccountEvent,
    BankAccountEventType,
    EventBase,
    PartyEvent,
    PartyEventType,
    TransactionEvent,
    TransactionEventType,
)

_MODELS: list[tuple[Any, type[EventBase]]] = [
    (TransactionEventType, TransactionEvent),
    (BankAccountEventType, BankAccountEvent),
    (PartyEventType, PartyEvent),
]

_SIGNED = (
    "Sent as a POST of the event's JSON, signed as Standard Webhooks: `webhook-id` is the "
    "event's `id`, `webhook-timestamp` the send time in Unix seconds, `webhook-signature` one "
    "`v1,<base64 HMAC-SHA256>` per active secret over `{id}.{timestamp}.{body}`. Answer 2xx "
    "once stored; anything else is retried (README, Events). The same event may arrive more "
    "than once: deduplicate on `id`."
)

_HEADERS: list[dict[str, Any]] = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "The event's `id`.",
        "schema": {"type": "string"},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "Unix seconds when this attempt was signed.",
        "schema": {"type": "string"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": "Space-separated `v1,<signature>` entries, one per active secret.",
        "schema": {"type": "string"},
    },
]


def model_for(event_type: EventType) -> type[EventBase]:
    for literal, model in _MODELS:
        if str(event_type) in get_args(literal):
            return model
    raise LookupError(f"no payload model declares {event_type}")


def declare_event_webhooks(app: FastAPI) -> None:
    for event_type in EventType:
        schema = {"$ref": f"#/components/schemas/{model_for(event_type).__name__}"}

        async def receiver() -> None:
            """Documentation only: the partner's endpoint, not ours."""

        app.webhooks.add_api_route(
            str(event_type),
            receiver,
            methods=["POST"],
            operation_id=f"event_{str(event_type).replace('.', '_')}",
            summary=f"`{event_type}`",
            description=_SIGNED,
            response_description="Received. Any other answer, or none in time, is retried.",
            openapi_extra={
                "parameters": _HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema}},
                },
            },
            tags=["events"],
        )
