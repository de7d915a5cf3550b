"""Webhook bodies (docs/bakkt-contract.md A6) read into our events."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.bakkt import (
    BankLinkEvent,
    FiatEvent,
    LinkStatus,
    MalformedWebhook,
    PartyEvent,
    PartyStatus,
    TransactionKind,
    TransactionStatus,
    UnknownEvent,
    parse_webhook,
)

BASE = {"requestId": "evt-1", "partnerPartyRef": "alice", "eventTime": "2024-05-04T12:00:00Z"}


def _body(**fields: object) -> bytes:
    return json.dumps({**BASE, **fields}).encode()


def test_fiat_event_carries_the_flattened_transaction() -> None:
    event = parse_webhook(
        _body(
            partnerWebhookType="FIAT_EVENT",
            partnerTransactionRef="t-1",
            relatedPartnerTransactionRef=None,
            fiatTransactionType="ACH_RETURN_FEE",
            transactionStatus="COMPLETE",
            amount=15.00,
            currency="USD",
            reasonCode="R01",
            reasonDescription="Insufficient funds",
            createdAt="2024-05-04T11:00:00Z",
            updatedAt="2024-05-04T12:00:00Z",
            unexpected="ignored",
        )
    )
    assert isinstance(event, FiatEvent)
    assert event.event_id == "evt-1"
    assert event.event_time == datetime(2024, 5, 4, 12, tzinfo=UTC)
    assert event.transaction.kind is TransactionKind.ACH_RETURN_FEE
    assert event.transaction.status is TransactionStatus.COMPLETE
    assert event.transaction.amount == Decimal("15.00")
    assert event.transaction.reason_code == "R01"


@pytest.mark.parametrize("expiry_field", ["verificationURLExpiry", "verificationUrlExpiry"])
def test_party_event_accepts_both_spellings_of_the_expiry(expiry_field: str) -> None:
    event = parse_webhook(
        _body(
            partnerWebhookType="PARTY_EVENT",
            partyStatus="UNDER_REVIEW",
            reasonCode="DOCUMENT_VERIFICATION",
            verificationURL="https://verify.example/x",
            **{expiry_field: "2024-05-04T12:00:00.000Z"},
        )
    )
    assert isinstance(event, PartyEvent)
    assert event.status is PartyStatus.UNDER_REVIEW
    assert event.verification_url == "https://verify.example/x"
    assert event.verification_url_expiry == datetime(2024, 5, 4, 12, tzinfo=UTC)


def test_bank_link_event_keeps_unknown_status_raw(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.bakkt"):
        event = parse_webhook(
            _body(
                partnerWebhookType="BANK_ACCOUNT_LINK",
                partnerTransactionRef="link-1",
                linkStatus="PENDING_MICRODEPOSITS",
                bankName="First",
                accountMask="6789",
                accountType="CHECKING",
            )
        )
    assert isinstance(event, BankLinkEvent)
    assert event.link_ref == "link-1"
    assert event.status == "PENDING_MICRODEPOSITS"
    assert "PENDING_MICRODEPOSITS" in caplog.text
    linked = parse_webhook(
        _body(
            partnerWebhookType="BANK_ACCOUNT_LINK", partnerTransactionRef="l", linkStatus="LINKED"
        )
    )
    assert isinstance(linked, BankLinkEvent)
    assert linked.status is LinkStatus.LINKED


def test_unknown_webhook_type_is_kept_whole() -> None:
    event = parse_webhook(_body(partnerWebhookType="KYC_EVENT", extra=1))
    assert isinstance(event, UnknownEvent)
    assert event.webhook_type == "KYC_EVENT"
    assert event.body["extra"] == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"partnerWebhookType": "FIAT_EVENT"}).encode(), "requestId"),
        (_body(partnerWebhookType="PARTY_EVENT"), "partyStatus"),
        (_body(partnerWebhookType="FIAT_EVENT", partnerTransactionRef="t"), "fiatTransactionType"),
        (
            _body(partnerWebhookType="PARTY_EVENT", partyStatus="ACTIVE", eventTime="soon"),
            "eventTime",
        ),
    ],
)
def test_malformed_bodies_raise_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedWebhook) as caught:
        parse_webhook(body)
    assert reason in caught.value.reason


@given(st.binary(max_size=200))
def test_arbitrary_bytes_either_parse_or_raise_malformed(body: bytes) -> None:
    try:
        parse_webhook(body)
    except MalformedWebhook:
        pass
