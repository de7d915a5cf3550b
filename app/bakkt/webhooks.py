"""Bakkt's webhook bodies, read into our events. Signatures are checked before this, elsewhere.

The payloads are assumed: docs/bakkt-contract.md A6 (FIAT_EVENT flattens the A5 transaction).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.bakkt import _wire as wire
from app.bakkt.errors import MalformedWebhook
from app.bakkt.types import BakktTransaction, LinkStatus, PartyStatus

__all__ = [
    "BankLinkEvent",
    "FiatEvent",
    "MalformedWebhook",
    "PartyEvent",
    "UnknownEvent",
    "WebhookEvent",
    "parse_webhook",
]

log = logging.getLogger("app.bakkt")


@dataclass(frozen=True, slots=True)
class FiatEvent:
    # Bakkt's requestId: unique per event, stable across redeliveries.
    event_id: str
    party_ref: str
    event_time: datetime
    transaction: BakktTransaction


@dataclass(frozen=True, slots=True)
class PartyEvent:
    event_id: str
    party_ref: str
    event_time: datetime
    status: PartyStatus | str
    reason_code: str | None
    verification_url: str | None
    verification_url_expiry: datetime | None


@dataclass(frozen=True, slots=True)
class BankLinkEvent:
    event_id: str
    party_ref: str
    event_time: datetime
    # The partnerTransactionRef of the link request this answers.
    link_ref: str
    status: LinkStatus | str
    reason_code: str | None
    bank_name: str | None
    # Last 4 digits only.
    account_mask: str | None
    account_type: str | None


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A webhook type we do not handle yet: kept whole so nothing is lost."""

    event_id: str
    party_ref: str | None
    event_time: datetime | None
    webhook_type: str
    body: Mapping[str, Any]


WebhookEvent = FiatEvent | PartyEvent | BankLinkEvent | UnknownEvent


def parse_webhook(body: bytes) -> WebhookEvent:
    try:
        obj = wire.mapping(wire.loads(body), "webhook body")
        return _parse(obj)
    except wire.BadShape as exc:
        raise MalformedWebhook(str(exc)) from None


def _parse(obj: Mapping[str, Any]) -> WebhookEvent:
    event_id = wire.text(obj, "requestId")
    kind = wire.text(obj, "partnerWebhookType")
    if kind == "FIAT_EVENT":
        transaction = wire.transaction(obj)
        return FiatEvent(
            event_id=event_id,
            party_ref=transaction.party_ref,
            event_time=wire.time(obj, "eventTime"),
            transaction=transaction,
        )
    if kind == "PARTY_EVENT":
        return PartyEvent(
            event_id=event_id,
            party_ref=wire.text(obj, "partnerPartyRef"),
            event_time=wire.time(obj, "eventTime"),
            status=wire.enum_or_raw(PartyStatus, obj.get("partyStatus"), "partyStatus"),
            reason_code=wire.opt_text(obj, "reasonCode"),
            # docs/bakkt-contract.md §4.3: the casing of these two differs between Bakkt's pages.
            verification_url=wire.opt_text(obj, "verificationURL", "verificationUrl"),
            verification_url_expiry=wire.opt_time(
                obj, "verificationURLExpiry", "verificationUrlExpiry"
            ),
        )
    if kind == "BANK_ACCOUNT_LINK":
        return BankLinkEvent(
            event_id=event_id,
            party_ref=wire.text(obj, "partnerPartyRef"),
            event_time=wire.time(obj, "eventTime"),
            link_ref=wire.text(obj, "partnerTransactionRef"),
            status=wire.enum_or_raw(LinkStatus, obj.get("linkStatus"), "linkStatus"),
            reason_code=wire.opt_text(obj, "reasonCode"),
            bank_name=wire.opt_text(obj, "bankName"),
            account_mask=wire.opt_text(obj, "accountMask"),
            account_type=wire.opt_text(obj, "accountType"),
        )
    log.warning("unknown Bakkt webhook type %r (event %s) kept as is", kind, event_id)
    party_ref = obj.get("partnerPartyRef")
    try:
        event_time = wire.opt_time(obj, "eventTime")
    except wire.BadShape:
        event_time = None
    return UnknownEvent(
        event_id=event_id,
        party_ref=party_ref if isinstance(party_ref, str) else None,
        event_time=event_time,
        webhook_type=kind,
        body=obj,
    )
