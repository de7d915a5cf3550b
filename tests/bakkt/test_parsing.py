"""Lenient reading of Bakkt's bodies and strict writing of ours (app/bakkt/_wire.py)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from app.bakkt import _wire as wire
from app.bakkt.types import (
    TransactionKind,
    TransactionStatus,
    TransferDirection,
    TransferMethod,
    TransferRequest,
    WireDestination,
)

TXN = {
    "partnerTransactionRef": "t-1",
    "relatedPartnerTransactionRef": None,
    "partnerPartyRef": "alice",
    "fiatTransactionType": "ACH_DEPOSIT",
    "transactionStatus": "PENDING",
    "amount": 10.1,
    "currency": "USD",
    "reasonCode": None,
    "reasonDescription": None,
    "createdAt": "2024-05-04T12:00:00.000Z",
    "updatedAt": "2024-05-04T12:00:01Z",
}


def _txn(**changes: object) -> dict[str, object]:
    return wire.mapping(wire.loads(json.dumps({**TXN, **changes}).encode()), "t")  # type: ignore[return-value]


def test_transaction_amount_is_exact_decimal_and_times_are_aware() -> None:
    txn = wire.transaction(_txn())
    assert txn.amount == Decimal("10.1")
    assert isinstance(txn.amount, Decimal)
    assert txn.kind is TransactionKind.ACH_DEPOSIT
    assert txn.status is TransactionStatus.PENDING
    assert txn.created_at == datetime(2024, 5, 4, 12, 0, tzinfo=UTC)
    assert txn.updated_at.tzinfo is not None


def test_unknown_enum_values_are_kept_raw_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.bakkt"):
        txn = wire.transaction(_txn(fiatTransactionType="TPJ", transactionStatus="ON_HOLD"))
    assert txn.kind == "TPJ"
    assert not isinstance(txn.kind, TransactionKind)
    assert txn.status == "ON_HOLD"
    assert "TPJ" in caplog.text
    assert "ON_HOLD" in caplog.text


def test_extra_fields_are_ignored_and_request_spelling_of_kind_is_accepted() -> None:
    body = _txn(somethingNew={"x": 1})
    del body["fiatTransactionType"]
    body["fiatTransactType"] = "WIRE_WITHDRAW"
    assert wire.transaction(body).kind is TransactionKind.WIRE_WITHDRAW


def test_naive_and_epoch_times_are_read_as_utc() -> None:
    assert wire.parse_time("2024-05-04T12:00:00", "t") == datetime(2024, 5, 4, 12, tzinfo=UTC)
    assert wire.parse_time(1714824000, "t") == datetime(2024, 5, 4, 12, tzinfo=UTC)
    assert wire.parse_time(1714824000000, "t") == datetime(2024, 5, 4, 12, tzinfo=UTC)


def test_missing_required_field_is_a_bad_shape() -> None:
    body = _txn()
    del body["partnerTransactionRef"]
    with pytest.raises(wire.BadShape, match="partnerTransactionRef"):
        wire.transaction(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"accessToken": "a", "expiresIn": "3600", "tokenType": "Bearer"}, ("a", 3600.0)),
        ({"accessToken": "a", "expiresIn": 120}, ("a", 120.0)),
        ({"access_token": "a", "expires_in": "90", "token_type": "Bearer"}, ("a", 90.0)),
        ({"accessToken": "a"}, ("a", None)),
    ],
)
def test_token_response_accepts_both_spellings_and_string_or_int_expiry(
    body: dict[str, object], expected: tuple[str, float | None]
) -> None:
    assert wire.token(body) == expected


def test_balance_picks_the_currency_row_and_defaults_to_zero() -> None:
    rows = wire.loads(
        b'[{"partnerPartyRef":"a","currency":"EUR","settledAmount":1,"unsettledAmount":2},'
        b'{"partnerPartyRef":"a","currency":"USD","settledAmount":50.01,"unsettledAmount":100.01}]'
    )
    usd = wire.balance(rows, "USD")
    assert (usd.settled, usd.unsettled) == (Decimal("50.01"), Decimal("100.01"))
    assert wire.balance([], "USD").settled == Decimal(0)


def test_error_body_masks_sensitive_rejected_values_and_reads_original_response() -> None:
    error = wire.ApiError(
        {
            "type": "IDEMPOTENCY_KEY_IN_USE",
            "details": [
                {
                    "type": "VALIDATION_ERROR",
                    "field": "accountNumber",
                    "rejectedValue": "123456789",
                },
                {"type": "VALIDATION_ERROR", "field": "amount", "rejectedValue": "x"},
            ],
            "originalResponse": {"status": 200, "body": None},
        }
    )
    assert [d.rejected_value for d in error.details] == ["***", "x"]
    assert error.original == (200, None)


def test_transfer_body_is_the_documented_shape() -> None:
    req = TransferRequest(
        party_ref="alice",
        transaction_ref="t-1",
        idempotency_key="k-1",
        direction=TransferDirection.WITHDRAW,
        method=TransferMethod.WIRE,
        amount=Decimal("1234.50"),
        wire=WireDestination(routing_number="021000021", account_number="9876", bank_name="B"),
    )
    body = json.loads(wire.dumps(wire.transfer_body(req)))
    assert body == {
        "partnerTransactionRef": "t-1",
        "idempotencyKey": "k-1",
        "fiatTransactType": "WITHDRAW",
        "instrumentType": "WIRE",
        "amount": 1234.5,
        "currency": "USD",
        "wireWithdrawDetails": {
            "wireRoutingNumber": "021000021",
            "wireAccountNumber": "9876",
            "wireBankName": "B",
        },
    }
    assert "9876" not in repr(req)


@pytest.mark.parametrize("amount", ["0", "-1", "10.001", "NaN"])
def test_transfer_request_refuses_amounts_bakkt_would_not_take(amount: str) -> None:
    with pytest.raises(ValueError, match="amount"):
        TransferRequest(
            party_ref="a",
            transaction_ref="t",
            idempotency_key="k",
            direction=TransferDirection.DEPOSIT,
            method=TransferMethod.ACH,
            amount=Decimal(amount),
        )


def test_wire_withdraw_without_destination_is_refused() -> None:
    with pytest.raises(ValueError, match="destination"):
        TransferRequest(
            party_ref="a",
            transaction_ref="t",
            idempotency_key="k",
            direction=TransferDirection.WITHDRAW,
            method=TransferMethod.WIRE,
            amount=Decimal(10),
        )
