"""The table from Bakkt's error `type` to what the service tells its consumer."""

from __future__ import annotations

import logging
import re

import pytest

from app.bakkt import ERROR_TABLE, BakktRejected, error_entry

# docs/bakkt-contract.md §5.2 plus the types its assumptions add.
BAKKT_TYPES = [
    "PARTY_SUSPENDED",
    "IDEMPOTENCY_KEY_IN_USE",
    "INVALID_PARTNER_ID",
    "PARTY_ACCOUNT_NOT_FOUND",
    "PARTNER_INVALID_OPERATION",
    "PARTY_INVALID_OPERATION",
    "PLAID_ACCOUNT_NOT_FOUND",
    "OPERATION_NOT_ALLOWED",
    "BANK_ACCOUNT_NOT_FOUND",
    "BANK_LINK_ITEM_NOT_FOUND",
    "LINKED_BANK_ACCOUNT_NOT_FOUND",
    "BANK_INSTITUTION_NOT_FOUND",
    "UNSUPPORTED_FINANCIAL_INSTITUTION",
    "STORED_AUTH_INVALID",
    "INVALID_FIELD_VALUE",
    "INSUFFICIENT_BALANCE",
    "BANK_ACCOUNT_BLOCKED",
    "TRANSACTION_NOT_FOUND",
    "UNAUTHORIZED",
]


def test_every_documented_type_has_an_entry() -> None:
    assert set(BAKKT_TYPES) == set(ERROR_TABLE)


@pytest.mark.parametrize("bakkt_type", BAKKT_TYPES)
def test_entries_are_stable_codes_with_an_error_status(bakkt_type: str) -> None:
    entry = ERROR_TABLE[bakkt_type]
    assert re.fullmatch(r"[a-z][a-z_]+", entry.code)
    assert 400 <= entry.http_status < 600
    assert entry.message.endswith(".")
    # Consumer-safe: never Bakkt's own wording or type names.
    assert bakkt_type not in entry.message


@pytest.mark.parametrize(
    ("bakkt_type", "code", "status"),
    [
        ("PARTY_SUSPENDED", "party_suspended", 403),
        ("PARTY_INVALID_OPERATION", "party_not_active", 403),
        ("INSUFFICIENT_BALANCE", "insufficient_balance", 422),
        ("LINKED_BANK_ACCOUNT_NOT_FOUND", "no_linked_bank_account", 409),
        ("BANK_ACCOUNT_NOT_FOUND", "no_linked_bank_account", 409),
        ("STORED_AUTH_INVALID", "relink_required", 409),
        ("UNSUPPORTED_FINANCIAL_INSTITUTION", "unsupported_bank", 422),
        ("INVALID_PARTNER_ID", "bakkt_misconfigured", 502),
    ],
)
def test_key_business_rules_map_to_their_codes(bakkt_type: str, code: str, status: int) -> None:
    assert (error_entry(bakkt_type).code, error_entry(bakkt_type).http_status) == (code, status)


def test_invalid_field_value_below_minimum_is_its_own_code() -> None:
    msg = "The amount is below the minimum withdrawal amount of $10."
    assert error_entry("INVALID_FIELD_VALUE", msg).code == "below_minimum"
    assert error_entry("INVALID_FIELD_VALUE", "bad routing number").code == "invalid_request"


def test_unknown_type_maps_to_generic_rejection_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.bakkt"):
        rejected = BakktRejected(400, "BRAND_NEW_TYPE", "something")
    assert (rejected.code, rejected.http_status, rejected.retryable) == (
        "bakkt_rejected",
        422,
        False,
    )
    assert "BRAND_NEW_TYPE" in caplog.text
