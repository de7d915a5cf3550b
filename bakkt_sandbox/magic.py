"""Magic values: inputs that produce a chosen Bakkt outcome on demand (table in docs/sandbox.md)."""

from decimal import Decimal
from enum import StrEnum

from bakkt_sandbox.model import PartyStatus


class AmountOutcome(StrEnum):
    NORMAL = "NORMAL"
    DECLINE = "DECLINE"
    CANCEL = "CANCEL"
    RETURN_BEFORE = "RETURN_BEFORE"
    RETURN_AFTER = "RETURN_AFTER"
    STAY_PENDING = "STAY_PENDING"


# The cents of the amount pick the outcome: 25.01 declines, 25.04 returns after completion.
AMOUNT_CENTS: dict[int, AmountOutcome] = {
    1: AmountOutcome.DECLINE,
    2: AmountOutcome.CANCEL,
    3: AmountOutcome.RETURN_BEFORE,
    4: AmountOutcome.RETURN_AFTER,
    5: AmountOutcome.STAY_PENDING,
}

DECLINE_REASON = ("RISK_DECLINED", "Declined by Bakkt risk checks")
CANCEL_REASON = ("CANCELLED", "Cancelled by Bakkt")
RETURN_BEFORE_CODE = "R01"
RETURN_AFTER_CODE = "R10"

# NACHA codes that mean the account itself is gone: the link is disabled
# (docs/bakkt-contract.md A6).
ACCOUNT_DISABLING_CODES = frozenset({"R02", "R03", "R04"})

NACHA_DESCRIPTIONS: dict[str, str] = {
    "R01": "Insufficient funds",
    "R02": "Account closed",
    "R03": "Unable to locate account / no account",
    "R04": "Invalid account number",
    "R05": "Unauthorized debit to a consumer account using a corporate SEC code",
    "R06": "Returned at the ODFI's request",
    "R07": "Authorization revoked by the customer",
    "R08": "Payment stopped",
    "R09": "Uncollected funds",
    "R10": "Customer advises unauthorized, improper, ineligible or part of an incomplete "
    "transaction",
    "R16": "Account frozen / returned per OFAC instruction",
    "R20": "Non-transaction account",
    "R29": "Corporate customer advises not authorized",
}


def amount_outcome(amount: Decimal) -> AmountOutcome:
    cents = int((amount * 100) % 100)
    return AMOUNT_CENTS.get(cents, AmountOutcome.NORMAL)


# A party whose ref starts with one of these prefixes is born with that status.
PARTY_PREFIXES: dict[str, PartyStatus] = {
    "suspended-": PartyStatus.SUSPENDED,
    "liquidated-": PartyStatus.LIQUIDATED,
    "closed-": PartyStatus.CLOSED,
    "inactive-": PartyStatus.INACTIVE,
    "review-": PartyStatus.UNDER_REVIEW,
}
# A ref with this prefix names no party: every call on it gets PARTY_ACCOUNT_NOT_FOUND.
UNKNOWN_PARTY_PREFIX = "unknown-"

DEFAULT_REASON: dict[PartyStatus, str] = {
    PartyStatus.ACTIVE: "ENROLLMENT",
    PartyStatus.INACTIVE: "OTHER",
    PartyStatus.SUSPENDED: "COMPLIANCE_LOCKED",
    PartyStatus.LIQUIDATED: "LIQUIDATE_ACCOUNT",
    PartyStatus.UNDER_REVIEW: "PENDING_REVIEW",
    PartyStatus.CLOSED: "CLOSED",
}


def initial_party_status(ref: str) -> PartyStatus:
    for prefix, status in PARTY_PREFIXES.items():
        if ref.startswith(prefix):
            return status
    return PartyStatus.ACTIVE


class TokenOutcome(StrEnum):
    LINKED = "LINKED"
    UNSUPPORTED_SYNC = "UNSUPPORTED_SYNC"
    UNSUPPORTED_ASYNC = "UNSUPPORTED_ASYNC"
    INVALID = "INVALID"
    EXPIRED = "EXPIRED"


# Checked in order, so the longer prefix wins.
PROCESSOR_TOKENS: list[tuple[str, TokenOutcome]] = [
    ("processor-unsupported-sync", TokenOutcome.UNSUPPORTED_SYNC),
    ("processor-unsupported", TokenOutcome.UNSUPPORTED_ASYNC),
    ("processor-invalid", TokenOutcome.INVALID),
    ("processor-expired", TokenOutcome.EXPIRED),
]


def processor_token_outcome(token: str) -> TokenOutcome:
    for prefix, outcome in PROCESSOR_TOKENS:
        if token.startswith(prefix):
            return outcome
    return TokenOutcome.LINKED


# An ACH link with this routing number is accepted, then fails as an unsupported bank.
UNSUPPORTED_ROUTING_NUMBER = "999999999"


class AchAccountOutcome(StrEnum):
    LINKED = "LINKED"
    FAIL = "FAIL"
    RETURN_FIRST_DEPOSIT = "RETURN_FIRST_DEPOSIT"


# Account numbers of `POST …/bankAccountLinking/ach` (linkBankAccountAchAsync): each answers
# 200, then its BANK_ACCOUNT_LINK webhook says FAILED, or LINKED; with the last, the first ACH
# deposit on the account returns R03 ("no account"), which also unlinks it. Any other account
# number links.
ACH_ACCOUNT_NUMBERS: dict[str, AchAccountOutcome] = {
    "99990001": AchAccountOutcome.FAIL,
    "99990000": AchAccountOutcome.LINKED,
    "99990003": AchAccountOutcome.RETURN_FIRST_DEPOSIT,
}
ACH_LINK_FAILURE_REASON = "ACCOUNT_VERIFICATION_FAILED"
ACH_FIRST_DEPOSIT_RETURN_CODE = "R03"


def ach_account_outcome(account_number: str) -> AchAccountOutcome:
    return ACH_ACCOUNT_NUMBERS.get(account_number, AchAccountOutcome.LINKED)


# Bakkt's guide's PARTY_EVENT reason codes (docs/bakkt-contract.md §4.3) and the status each
# implies when a control request names only the reason. The guide pairs none of them with a
# status; these are the plausible pairings of §4.3.
REASON_STATUS: dict[str, PartyStatus] = {
    "ACCOUNT_CLOSURE_REQUESTED": PartyStatus.CLOSED,
    "MAX_ACH_RETURNS": PartyStatus.SUSPENDED,
    "COMPLIANCE_LOCKED": PartyStatus.SUSPENDED,
    "LIQUIDATE_ACCOUNT": PartyStatus.LIQUIDATED,
    "OTHER": PartyStatus.SUSPENDED,
    "TAX_ID_MAX_RETRIES": PartyStatus.SUSPENDED,
    "CLOSED": PartyStatus.CLOSED,
    "ENROLLMENT": PartyStatus.ACTIVE,
    "RISK_KYC": PartyStatus.UNDER_REVIEW,
    "RISK_OFAC": PartyStatus.UNDER_REVIEW,
    "PENDING_REVIEW": PartyStatus.UNDER_REVIEW,
    "DOCUMENT_VERIFICATION": PartyStatus.UNDER_REVIEW,
}
# How long a document-verification URL stays valid when the control request sets no expiry.
VERIFICATION_URL_TTL_MS = 7 * 24 * 3600 * 1000
