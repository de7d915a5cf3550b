"""The funding API's problems: each a class with its HTTP status and machine `code`, so every
route can declare what it may answer and the OpenAPI document tells the truth. Bakkt's
rejections become one class per code of the client's error table."""

from __future__ import annotations

from typing import Any

from app.bakkt import (
    ERROR_TABLE,
    BakktAuthFailed,
    BakktError,
    BakktRateLimited,
    BakktRejected,
    ErrorEntry,
)
from app.bakkt.errors import BELOW_MINIMUM, UNKNOWN_REJECTION
from app.errors import AppError, Conflict, Forbidden, NotFound, ServiceUnavailable, Unprocessable


class PartyNotActive(Forbidden):
    code = "party_not_active"
    title = "The account may not make this request in its current status"


class PartySuspended(Forbidden):
    code = "party_suspended"
    title = "The account is suspended"


class LimitExceeded(Unprocessable):
    code = "limit_exceeded"
    title = "The amount exceeds a limit of the account"


class InvalidProcessorToken(Unprocessable):
    code = "invalid_processor_token"
    title = "The Plaid processor token is invalid or expired"


class UnknownBankAccount(Unprocessable):
    code = "unknown_bank_account"
    title = "The bank account named in the request does not exist"


class NoLinkedBankAccount(Conflict):
    code = "no_linked_bank_account"
    title = "No linked bank account; link one first"


class BankAccountNotLinked(Conflict):
    code = "bank_account_not_linked"
    title = "The bank account is not linked"


class BankAccountDisabled(Conflict):
    code = "bank_account_disabled"
    title = "The bank account was disabled after an ACH return; link another one"


class BankAccountUnderReview(Conflict):
    code = "bank_account_under_review"
    title = "The bank account is under review after a disputed debit"


class BankAccountLinkPending(Conflict):
    code = "bank_account_link_pending"
    title = "The bank account's link has not finished yet"


class BankAccountReplaced(Conflict):
    code = "bank_account_replaced"
    title = "A later link replaced this bank account; Bakkt uses the current one"


class BankAccountNotFound(NotFound):
    code = "bank_account_not_found"
    title = "No such bank account"


class TransactionNotFound(NotFound):
    code = "transaction_not_found"
    title = "No such transaction"


class InvalidCursor(AppError):
    status_code = 400
    code = "invalid_cursor"
    title = "The cursor is not valid"


class BakktUnavailableProblem(ServiceUnavailable):
    code = "bakkt_unavailable"
    title = "The funding provider cannot be reached right now; retry shortly"


class BakktRejectionProblem(AppError):
    """Base of the problems Bakkt's rejections become: one class per code of the error table
    (`app/bakkt/errors.py`), so each can be found by name and declared on a route."""


def _entry(code: str) -> tuple[int, str, str]:
    entry = _ENTRIES[code]
    return entry.http_status, entry.code, entry.message


_ENTRIES: dict[str, ErrorEntry] = {
    entry.code: entry for entry in (*ERROR_TABLE.values(), BELOW_MINIMUM, UNKNOWN_REJECTION)
}


class PartySuspendedAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("party_suspended")


class PartyNotActiveAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("party_not_active")


class PartyAccountNotFoundAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("party_account_not_found")


class OperationNotAllowedAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("operation_not_allowed")


class BankAccountBlockedAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("bank_account_blocked")


class NoLinkedBankAccountAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("no_linked_bank_account")


class RelinkRequiredAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("relink_required")


class UnsupportedBankAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("unsupported_bank")


class InsufficientBalanceAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("insufficient_balance")


class InvalidRequestAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("invalid_request")


class IdempotencyKeyInUseAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("idempotency_key_in_use")


class TransactionNotFoundAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("transaction_not_found")


class MisconfiguredAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("bakkt_misconfigured")


class AuthFailedAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("bakkt_auth_failed")


class BelowMinimumAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("below_minimum")


class RejectedAtBakkt(BakktRejectionProblem):
    status_code, code, title = _entry("bakkt_rejected")


BAKKT_REJECTIONS: dict[str, type[BakktRejectionProblem]] = {
    cls.code: cls for cls in BakktRejectionProblem.__subclasses__()
}
if BAKKT_REJECTIONS.keys() != _ENTRIES.keys():  # pragma: no cover - caught by every test run
    raise RuntimeError(f"no problem class for {sorted(_ENTRIES.keys() - BAKKT_REJECTIONS.keys())}")


def rejection_error(exc: BakktRejected, **extra: Any) -> AppError:
    return BAKKT_REJECTIONS[exc.code](exc.consumer_message, extra=extra)


def unavailable_error(exc: BakktError) -> AppError:
    """What a consumer gets when Bakkt did not answer a read or a link: retry later."""
    if isinstance(exc, BakktRejected):
        return rejection_error(exc)
    if isinstance(exc, BakktAuthFailed):
        return BAKKT_REJECTIONS["bakkt_auth_failed"](ERROR_TABLE["UNAUTHORIZED"].message)
    retry_after = 2
    if isinstance(exc, BakktRateLimited) and exc.retry_after is not None:
        retry_after = max(1, round(exc.retry_after))
    return BakktUnavailableProblem(retry_after=retry_after)
