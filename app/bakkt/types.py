"""What the Bakkt client hands to the rest of the service, in our names.

Enum-typed fields are `Enum | str`: a value Bakkt sends that we do not know yet is kept as the raw
string (and logged where it is parsed) instead of failing the whole response or webhook.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

_CENTS = Decimal("0.01")


class TransferDirection(StrEnum):
    DEPOSIT = "DEPOSIT"
    WITHDRAW = "WITHDRAW"


class TransferMethod(StrEnum):
    ACH = "ACH"
    WIRE = "WIRE"


class Instrument(StrEnum):
    ACH = "ACH"
    DEBIT = "DEBIT"
    TPJ = "TPJ"
    WIRE = "WIRE"


class TransactionKind(StrEnum):
    ACH_DEPOSIT = "ACH_DEPOSIT"
    ACH_WITHDRAW = "ACH_WITHDRAW"
    WIRE_DEPOSIT = "WIRE_DEPOSIT"
    WIRE_WITHDRAW = "WIRE_WITHDRAW"
    ACH_RETURN_FEE = "ACH_RETURN_FEE"
    PARTNER_WRITE_OFF = "PARTNER_WRITE_OFF"
    BAKKT_WRITE_OFF = "BAKKT_WRITE_OFF"
    DECEASED_PARTY = "DECEASED_PARTY"
    OTHER_ADJUSTMENT = "OTHER_ADJUSTMENT"


class TransactionStatus(StrEnum):
    PENDING = "PENDING"
    COMPLETE = "COMPLETE"
    DECLINED = "DECLINED"
    CANCELLED = "CANCELLED"
    RETURNED = "RETURNED"


class PartyStatus(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    SUSPENDED = "SUSPENDED"
    LIQUIDATED = "LIQUIDATED"
    UNDER_REVIEW = "UNDER_REVIEW"
    CLOSED = "CLOSED"


class LinkStatus(StrEnum):
    LINKED = "LINKED"
    FAILED = "FAILED"
    UNLINKED = "UNLINKED"


@dataclass(frozen=True, slots=True)
class WireDestination:
    """Where a wire withdrawal goes. Bakkt sends to exactly these details
    (docs/bakkt-contract.md §2.8)."""

    routing_number: str
    account_number: str = field(repr=False)
    bank_name: str
    bank_address: str | None = None
    swift_code: str | None = None


@dataclass(frozen=True, slots=True)
class TransferRequest:
    party_ref: str
    # Our own reference, unique per transfer; Bakkt reports the transfer under it.
    transaction_ref: str
    # Must be persisted before the first send and reused for every resend of this transfer.
    idempotency_key: str
    direction: TransferDirection
    method: TransferMethod
    amount: Decimal
    currency: str = "USD"
    wire: WireDestination | None = None

    def __post_init__(self) -> None:
        if not self.amount.is_finite() or self.amount <= 0:
            raise ValueError("amount must be a positive, finite Decimal")
        if self.amount != self.amount.quantize(_CENTS):
            raise ValueError("amount must have at most 2 decimal places")
        if self.currency != "USD":
            raise ValueError("Bakkt transfers are USD only")
        if (
            self.method is TransferMethod.WIRE
            and self.direction is TransferDirection.WITHDRAW
            and self.wire is None
        ):
            raise ValueError("a wire withdrawal needs its destination (wire=...)")
        if not self.transaction_ref or not self.idempotency_key or not self.party_ref:
            raise ValueError("party_ref, transaction_ref and idempotency_key are required")


@dataclass(frozen=True, slots=True)
class BakktTransaction:
    transaction_ref: str
    # For fees and adjustments: the transfer they concern.
    related_transaction_ref: str | None
    party_ref: str
    kind: TransactionKind | str
    status: TransactionStatus | str
    amount: Decimal
    currency: str
    # NACHA R-code on returns, a decline reason otherwise.
    reason_code: str | None
    reason_description: str | None
    created_at: datetime
    updated_at: datetime
    # Assumed fields Bakkt left out, filled in from others (`createdAt`, `updatedAt`).
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Balance:
    currency: str
    # Available to the consumer.
    settled: Decimal
    # Pending, not yet settled.
    unsettled: Decimal


@dataclass(frozen=True, slots=True)
class LinkUrl:
    url: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class WireInstructions:
    """Bakkt's bank details for one party's inbound wire. Never cache them
    (docs/bakkt-contract.md §2.9)."""

    # The party's own code; the sender must put it in the wire's beneficiary instructions.
    reference_number: str
    routing_number: str
    account_number: str
    swift_code: str
    bank_name: str
    bank_address: str
    beneficiary_name: str
    beneficiary_address: str


# --- webhook events (docs/bakkt-contract.md A6) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class FiatEvent:
    # Bakkt's requestId: unique per event, stable across redeliveries.
    event_id: str
    party_ref: str
    event_time: datetime
    transaction: BakktTransaction
    # Assumed fields the event left out, filled in from others (`eventTime`, `createdAt` ...).
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PartyEvent:
    event_id: str
    party_ref: str
    event_time: datetime
    status: PartyStatus | str
    reason_code: str | None
    verification_url: str | None
    verification_url_expiry: datetime | None
    # Assumed fields the event left out, filled in from others (`eventTime`, `createdAt` ...).
    missing: tuple[str, ...] = ()


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
    # Assumed fields the event left out, filled in from others (`eventTime`, `createdAt` ...).
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A webhook type we do not handle yet: kept whole so nothing is lost."""

    event_id: str
    party_ref: str | None
    event_time: datetime | None
    webhook_type: str
    body: Mapping[str, Any]
    missing: tuple[str, ...] = ()


WebhookEvent = FiatEvent | PartyEvent | BankLinkEvent | UnknownEvent
