"""Bakkt's webhook bodies, read into our events. Signatures are checked before this, elsewhere.

The payloads are assumed: docs/bakkt-contract.md A6 (FIAT_EVENT flattens the A5 transaction).
Field and header names are in `app.bakkt._wire`, with the rest of Bakkt's wire format.
"""

from __future__ import annotations

from datetime import datetime

from app.bakkt import _wire as wire
from app.bakkt._wire import (
    WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
    WEBHOOK_TOKEN_HEADER,
    webhook_type,
)
from app.bakkt.errors import MalformedWebhook
from app.bakkt.types import BankLinkEvent, FiatEvent, PartyEvent, UnknownEvent, WebhookEvent

__all__ = [
    "WEBHOOK_ID_HEADER",
    "WEBHOOK_SIGNATURE_HEADER",
    "WEBHOOK_TIMESTAMP_HEADER",
    "WEBHOOK_TOKEN_HEADER",
    "BankLinkEvent",
    "FiatEvent",
    "MalformedWebhook",
    "PartyEvent",
    "UnknownEvent",
    "WebhookEvent",
    "parse_webhook",
    "webhook_type",
]


def parse_webhook(body: bytes, *, received_at: datetime | None = None) -> WebhookEvent:
    """`received_at` stands in for an event time the body does not state."""
    try:
        obj = wire.mapping(wire.loads(body), "webhook body")
        return wire.webhook(obj, received_at=received_at)
    except wire.BadShape as exc:
        raise MalformedWebhook(str(exc)) from None
