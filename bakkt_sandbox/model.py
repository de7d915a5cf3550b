"""The sandbox's objects and their wire shapes (docs/bakkt-contract.md §2, §5, A5, A8)."""

import functools
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

CENT = Decimal("0.01")
# Under 2**53 cents, so every amount is exact as a JSON number (a float) on the way back.
MAX_AMOUNT = Decimal("999999999999.99")


class PartyStatus(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    SUSPENDED = "SUSPENDED"
    LIQUIDATED = "LIQUIDATED"
    UNDER_REVIEW = "UNDER_REVIEW"
    CLOSED = "CLOSED"


# Assumed enums: docs/bakkt-contract.md A5.
class TxType(StrEnum):
    ACH_DEPOSIT = "ACH_DEPOSIT"
    ACH_WITHDRAW = "ACH_WITHDRAW"
    WIRE_DEPOSIT = "WIRE_DEPOSIT"
    WIRE_WITHDRAW = "WIRE_WITHDRAW"
    ACH_RETURN_FEE = "ACH_RETURN_FEE"
    PARTNER_WRITE_OFF = "PARTNER_WRITE_OFF"
    BAKKT_WRITE_OFF = "BAKKT_WRITE_OFF"
    DECEASED_PARTY = "DECEASED_PARTY"
    OTHER_ADJUSTMENT = "OTHER_ADJUSTMENT"


class TxStatus(StrEnum):
    PENDING = "PENDING"
    COMPLETE = "COMPLETE"
    DECLINED = "DECLINED"
    CANCELLED = "CANCELLED"
    RETURNED = "RETURNED"


# docs/bakkt-contract.md A5: the only status moves Bakkt makes.
ALLOWED_MOVES: dict[TxStatus, frozenset[TxStatus]] = {
    TxStatus.PENDING: frozenset(
        {TxStatus.COMPLETE, TxStatus.DECLINED, TxStatus.CANCELLED, TxStatus.RETURNED}
    ),
    TxStatus.COMPLETE: frozenset({TxStatus.RETURNED}),
    TxStatus.DECLINED: frozenset(),
    TxStatus.CANCELLED: frozenset(),
    TxStatus.RETURNED: frozenset(),
}

DEPOSIT_TYPES = frozenset({TxType.ACH_DEPOSIT, TxType.WIRE_DEPOSIT})
WITHDRAW_TYPES = frozenset({TxType.ACH_WITHDRAW, TxType.WIRE_WITHDRAW})


class ApiError(Exception):
    """A `PublicApiError` answer (docs/bakkt-contract.md §5.1) with its HTTP status (A8)."""

    def __init__(
        self,
        status: int,
        type_: str,
        description: str,
        detail: str = "",
        details: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{type_}: {description}")
        self.status = status
        self.type = type_
        self.description = description
        self.detail = detail or description
        self.details = details or []
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "description": self.description,
            "detail": self.detail,
            "details": self.details,
            **self.extra,
        }


def invalid_field(field_name: str, rejected: Any, description: str) -> ApiError:
    return ApiError(
        400,
        "INVALID_FIELD_VALUE",
        description,
        "validation error",
        [
            {
                "type": "VALIDATION_ERROR",
                "description": description,
                "field": field_name,
                "rejectedValue": rejected,
            }
        ],
    )


def parse_amount(value: Any, field_name: str = "amount") -> Decimal:
    """A JSON number (already a Decimal when parsed with parse_float=Decimal) > 0, ≤ 2 places."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise invalid_field(field_name, value, "The amount must be a number.")
    amount = Decimal(value)
    if not amount.is_finite() or amount <= 0:
        raise invalid_field(field_name, _jsonable(amount), "The amount must be greater than 0.")
    if amount > MAX_AMOUNT:
        # Beyond this, cents no longer round-trip through the JSON number Bakkt answers with.
        raise invalid_field(
            field_name, _jsonable(amount), f"The amount must be at most {MAX_AMOUNT}."
        )
    if amount != amount.quantize(CENT):
        raise invalid_field(
            field_name, _jsonable(amount), "The amount must have at most 2 decimal places."
        )
    return amount.quantize(CENT)


def _jsonable(amount: Decimal) -> float | str:
    as_float = float(amount)
    # 1e400 has no float: echo it as its digits rather than as the invalid JSON `Infinity`.
    return as_float if math.isfinite(as_float) else str(amount)


def json_default(value: Any) -> Any:
    """Encode what parsing with `parse_float=Decimal` puts into a rejected value."""
    if isinstance(value, Decimal):
        return _jsonable(value) if value.is_finite() else str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def money(amount: Decimal) -> float:
    """Emit as a JSON number: every 2-place decimal below 2**53 cents round-trips through float."""
    return float(amount.quantize(CENT))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@functools.lru_cache(maxsize=256)
def _iso_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds, the precision every stored timestamp is truncated to."""
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_seconds(seconds)}.{millis:03d}Z"


def parse_iso(value: str) -> int:
    """Milliseconds since the epoch of an ISO-8601 timestamp; naive means UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@dataclass(slots=True)
class BankAccount:
    link_ref: str
    bank_name: str
    account_mask: str
    account_type: str
    routing_number: str
    source: str  # "plaid", "ach", "manual", "hosted"
    linked_ms: int = 0
    # Magic account number: the first ACH deposit on this account returns with this NACHA code.
    return_first_deposit: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "partnerTransactionRef": self.link_ref,
            "bankName": self.bank_name,
            "accountMask": self.account_mask,
            "accountType": self.account_type,
            "source": self.source,
            "linkedAt": iso_ms(self.linked_ms),
        }


@dataclass(slots=True)
class Transaction:
    """The assumed Transaction object, docs/bakkt-contract.md A5."""

    party_ref: str
    ref: str
    type: TxType
    amount: Decimal
    status: TxStatus
    created_ms: int
    updated_ms: int
    related_ref: str | None = None
    reason_code: str | None = None
    reason_description: str | None = None
    idempotency_key: str | None = None
    # Bumped by every explicit move so timers planned for an older state are ignored.
    plan_version: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "partnerTransactionRef": self.ref,
            "relatedPartnerTransactionRef": self.related_ref,
            "partnerPartyRef": self.party_ref,
            "fiatTransactionType": self.type.value,
            "transactionStatus": self.status.value,
            "amount": money(self.amount),
            "currency": "USD",
            "reasonCode": self.reason_code,
            "reasonDescription": self.reason_description,
            "createdAt": iso_ms(self.created_ms),
            "updatedAt": iso_ms(self.updated_ms),
        }


@dataclass(slots=True)
class Party:
    ref: str
    status: PartyStatus
    reason_code: str | None
    settled: Decimal = Decimal("0.00")
    unsettled: Decimal = Decimal("0.00")
    # Bakkt keeps one bank account per party: a new link replaces the current one, `/transfer`
    # names none and unlink acts on the current one. Replaced ones are kept only for inspection.
    bank_account: BankAccount | None = None
    replaced_accounts: list[BankAccount] = field(default_factory=list)
    transactions: dict[str, Transaction] = field(default_factory=dict)
    status_changed_ms: int = 0
    verification_url: str | None = None
    verification_expiry_ms: int | None = None

    def balance_json(self) -> dict[str, Any]:
        return {
            "partnerPartyRef": self.ref,
            "currency": "USD",
            "settledAmount": money(self.settled),
            "unsettledAmount": money(self.unsettled),
        }


@dataclass(slots=True)
class LedgerEntry:
    """One accepted `/transfer`: what `GET /sandbox/transfers` lists."""

    transaction: Transaction
    idempotency_key: str
    fiat_transact_type: str
    instrument_type: str
    request_count: int = 1
    # The link Bakkt moves the money through (ACH only): the party's current account then.
    bank_account_ref: str | None = None

    def to_json(self) -> dict[str, Any]:
        tx = self.transaction
        return {
            "partnerPartyRef": tx.party_ref,
            "partnerTransactionRef": tx.ref,
            "idempotencyKey": self.idempotency_key,
            "amount": money(tx.amount),
            "currency": "USD",
            "fiatTransactType": self.fiat_transact_type,
            "instrumentType": self.instrument_type,
            "fiatTransactionType": tx.type.value,
            "status": tx.status.value,
            "requestCount": self.request_count,
            "bankAccountRef": self.bank_account_ref,
            "createdAt": iso_ms(tx.created_ms),
            "updatedAt": iso_ms(tx.updated_ms),
        }
