"""What can go wrong talking to Bakkt, and what each Bakkt rejection means for our consumer.

Callers branch on the class: `BakktRejected` means Bakkt refused and nothing happened;
`BakktOutcomeUnknown` means it may have happened (settle it by looking the transaction up);
`BakktUnavailable`, `BakktRateLimited` and `BakktAuthFailed` mean the request did not get through.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

log = logging.getLogger("app.bakkt")


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """How the service answers its consumer when Bakkt rejects a request with this `type`."""

    code: str
    http_status: int
    message: str
    # True when the same request, unchanged, may succeed if the consumer retries later.
    retryable: bool


_RELINK = ErrorEntry(
    "relink_required", 409, "The bank link is no longer valid. Link the bank account again.", False
)
_NO_BANK = ErrorEntry(
    "no_linked_bank_account", 409, "No linked bank account. Link a bank account first.", False
)

# Bakkt `type` values: docs/bakkt-contract.md §5.2, plus TRANSACTION_NOT_FOUND and UNAUTHORIZED
# (A1, A3, A8 there). Problems with our own partner set-up or credentials
# are the service's fault, not the consumer's, so they answer 502 rather than a 4xx.
ERROR_TABLE: Mapping[str, ErrorEntry] = MappingProxyType(
    {
        "PARTY_SUSPENDED": ErrorEntry("party_suspended", 403, "The account is suspended.", False),
        "PARTY_INVALID_OPERATION": ErrorEntry(
            "party_not_active", 403, "The account is not active for this operation.", False
        ),
        "PARTY_ACCOUNT_NOT_FOUND": ErrorEntry(
            "party_account_not_found", 403, "The account is not set up for funding yet.", False
        ),
        "OPERATION_NOT_ALLOWED": ErrorEntry(
            "operation_not_allowed", 403, "This account may not make this transfer.", False
        ),
        "BANK_ACCOUNT_BLOCKED": ErrorEntry(
            "bank_account_blocked", 403, "The linked bank account is blocked.", False
        ),
        "BANK_ACCOUNT_NOT_FOUND": _NO_BANK,
        "LINKED_BANK_ACCOUNT_NOT_FOUND": _NO_BANK,
        "PLAID_ACCOUNT_NOT_FOUND": _NO_BANK,
        "BANK_LINK_ITEM_NOT_FOUND": _RELINK,
        "BANK_INSTITUTION_NOT_FOUND": _RELINK,
        "STORED_AUTH_INVALID": _RELINK,
        "UNSUPPORTED_FINANCIAL_INSTITUTION": ErrorEntry(
            "unsupported_bank", 422, "This bank is not supported. Try another bank.", False
        ),
        "INSUFFICIENT_BALANCE": ErrorEntry(
            "insufficient_balance", 422, "Not enough settled balance for this withdrawal.", False
        ),
        "INVALID_FIELD_VALUE": ErrorEntry(
            "invalid_request", 422, "A field of the request was not accepted.", False
        ),
        "IDEMPOTENCY_KEY_IN_USE": ErrorEntry(
            "idempotency_key_in_use", 409, "This request was already submitted.", False
        ),
        "TRANSACTION_NOT_FOUND": ErrorEntry(
            "transaction_not_found", 404, "No such transaction.", False
        ),
        "INVALID_PARTNER_ID": ErrorEntry(
            "bakkt_misconfigured", 502, "The funding provider is misconfigured.", False
        ),
        "PARTNER_INVALID_OPERATION": ErrorEntry(
            "bakkt_misconfigured", 502, "The funding provider is misconfigured.", False
        ),
        "UNAUTHORIZED": ErrorEntry(
            "bakkt_auth_failed", 502, "The funding provider refused our credentials.", True
        ),
    }
)

# INVALID_FIELD_VALUE is also how Bakkt says "below the minimum" (docs/bakkt-contract.md §5.2):
# only the description tells them apart.
BELOW_MINIMUM = ErrorEntry("below_minimum", 422, "The amount is below the minimum.", False)
UNKNOWN_REJECTION = ErrorEntry("bakkt_rejected", 422, "The request was not accepted.", False)


def error_entry(bakkt_type: str | None, description: str | None = None) -> ErrorEntry:
    if bakkt_type == "INVALID_FIELD_VALUE" and description and "minimum" in description.lower():
        return BELOW_MINIMUM
    entry = ERROR_TABLE.get(bakkt_type or "")
    if entry is None:
        log.warning("bakkt rejection of unknown type %r", bakkt_type)
        return UNKNOWN_REJECTION
    return entry


class BakktError(Exception):
    """Base of everything the Bakkt client raises."""


class BakktUnsendable(BakktError, ValueError):
    """A reference that cannot be one segment of a Bakkt path (`.` or `..`); nothing was sent."""


@dataclass(frozen=True, slots=True)
class FieldError:
    type: str | None
    description: str | None
    field: str | None
    # Sensitive fields (account numbers, tokens) have it masked before it gets here.
    rejected_value: Any


class BakktRejected(BakktError):
    """Bakkt answered 4xx: it refused the request and did nothing. Never retried."""

    def __init__(
        self,
        status: int,
        bakkt_type: str | None,
        description: str | None,
        detail: str | None = None,
        details: tuple[FieldError, ...] = (),
    ) -> None:
        self.status = status
        self.bakkt_type = bakkt_type
        self.description = description
        self.detail = detail
        self.details = details
        self.entry = error_entry(bakkt_type, description)
        super().__init__(f"Bakkt rejected the request: {status} {bakkt_type}: {description}")

    @property
    def code(self) -> str:
        return self.entry.code

    @property
    def http_status(self) -> int:
        return self.entry.http_status

    @property
    def consumer_message(self) -> str:
        return self.entry.message

    @property
    def retryable(self) -> bool:
        return self.entry.retryable


class BakktUnavailable(BakktError):
    """No usable answer: network failure, timeout, 5xx or a response we cannot read.

    Raised by writes only when the request certainly never reached Bakkt.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class BakktRateLimited(BakktError):
    """Bakkt answered 429 and retrying within our budget did not help. Nothing was done."""

    def __init__(self, retry_after: float | None) -> None:
        self.retry_after = retry_after
        super().__init__(f"Bakkt rate limited the request (retry after {retry_after} s)")


class BakktAuthFailed(BakktError):
    """Bakkt refused our credentials, or a fresh token, so nothing was done."""


class BakktOutcomeUnknown(BakktError):
    """The request may or may not have been carried out at Bakkt.

    For a transfer: settle it with `get_transaction(party_ref, transaction_ref)`, and resend only
    with the same idempotency key. For a link: its BANK_ACCOUNT_LINK webhook carries the same ref.
    """

    def __init__(self, operation: str, reference: str, last_error: str) -> None:
        self.operation = operation
        self.reference = reference
        self.last_error = last_error
        super().__init__(f"outcome of {operation} {reference!r} unknown: {last_error}")


class MalformedWebhook(BakktError):
    """A webhook body we cannot turn into an event; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
