"""The public JSON of the webhook endpoint routes. Secrets go in, and never come out: a
response names each by its fingerprint only."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr
from pydantic.alias_generators import to_camel

from app.events.models import EventType

MAX_SECRETS = 5


class RequestModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", hide_input_in_errors=True
    )


class ResponseModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


Secret = Annotated[SecretStr, Field(description="`whsec_` and base64 of at least 24 bytes")]


class EndpointCreate(RequestModel):
    url: str = Field(max_length=2048, description="An absolute https:// (or http://) URL")
    description: str | None = Field(default=None, max_length=500)
    event_types: list[EventType] | None = Field(
        default=None,
        max_length=64,
        description="Only these event types are sent; omitted or null: every type",
    )
    secrets: list[Secret] | None = Field(
        default=None,
        max_length=MAX_SECRETS,
        description="Signing secrets, all signing (rotation); omitted: PARTNER_WEBHOOK_SECRETS",
    )


class EndpointUpdate(RequestModel):
    description: str | None = Field(default=None, max_length=500)
    event_types: list[EventType] | None = Field(default=None, max_length=64)
    secrets: list[Secret] | None = Field(default=None, max_length=MAX_SECRETS)


class DeliveryCounts(ResponseModel):
    pending: int
    delivered: int
    oldest_pending_at: datetime | None


class Endpoint(ResponseModel):
    id: uuid.UUID
    url: str
    source: str = Field(description="`settings` (PARTNER_WEBHOOK_URLS) or `admin`")
    description: str | None
    event_types: list[str] | None
    secret_fingerprints: list[str] = Field(
        description="First 12 hex digits of SHA-256 of each signing key; the secrets themselves "
        "are never shown"
    )
    status: str
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    created_at: datetime
    deliveries: DeliveryCounts | None = None


class EndpointList(ResponseModel):
    data: list[Endpoint]


class RedeliveryRequest(RequestModel):
    event_id: str | None = Field(default=None, max_length=64, pattern=r"^evt_[0-9A-Za-z]{1,60}$")
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None


class RedeliveryAccepted(ResponseModel):
    events: int = Field(description="Events queued again for this endpoint")


class DeliveryAttempt(ResponseModel):
    id: int
    event_id: str
    party_ref: str
    attempt: int
    attempted_at: datetime
    outcome: str = Field(
        description="delivered, http_error, redirect, timeout, connection or refused"
    )
    status_code: int | None
    latency_ms: int
    error: str | None
    delivery_state: str


class AttemptPage(ResponseModel):
    data: list[DeliveryAttempt]
    next: str | None = Field(description="Pass as `before` for older attempts; null at the end")
