"""Durable intake: every verified event stored once, redeliveries change nothing, unreadable
bodies kept for an operator."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.models import OperatorAlert
from app.funding.models import Party, TransactionHistory
from app.webhooks.models import WebhookEvent
from tests.webhooks.conftest import HarnessFactory
from tests.webhooks.events import (
    T0,
    URL,
    Flow,
    SeedTransaction,
    deliver,
    encode,
    fiat,
    party_event,
    seed,
    signed_headers,
)


async def _events(session: AsyncSession, request_id: str) -> list[WebhookEvent]:
    rows = await session.execute(
        select(WebhookEvent)
        .where(WebhookEvent.request_id == request_id)
        .execution_options(populate_existing=True)
    )
    return list(rows.scalars())


async def _alerts(session: AsyncSession, kind: str) -> list[OperatorAlert]:
    rows = await session.execute(select(OperatorAlert).where(OperatorAlert.kind == kind))
    return list(rows.scalars())


async def test_a_verified_event_is_stored_with_its_raw_body_headers_and_times(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    event = party_event("evt-store", party="p-store", status="SUSPENDED", reason="OTHER", at=T0)
    body = encode(event)
    headers = signed_headers(body, msg_id="evt-store")
    response = await client.post(URL, content=body, headers={**headers, "user-agent": "bakkt/1"})
    assert response.status_code == 200
    assert response.json() == {
        "received": True,
        "requestId": "evt-store",
        "duplicate": False,
        "status": "APPLIED",
    }
    [row] = await _events(session, "evt-store")
    assert row.body == body
    assert row.event_type == "PARTY_EVENT"
    assert row.party_ref == "p-store"
    assert row.event_time == T0
    assert row.received_at is not None
    assert row.processed_at is not None
    assert row.status == "APPLIED"
    assert row.attempts == 1
    assert row.next_attempt_at is None
    assert row.headers["webhook-id"] == "evt-store"
    assert row.headers["webhook-signature"] == headers["webhook-signature"]
    assert row.headers["user-agent"] == "bakkt/1"


async def test_a_redelivery_answers_2xx_and_changes_nothing(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    suspended = party_event("evt-dup-1", party="p-dup", status="SUSPENDED", reason="OTHER", at=T0)
    active = party_event(
        "evt-dup-2", party="p-dup", status="ACTIVE", reason="ENROLLMENT", at=T0 + timedelta(1)
    )
    assert (await deliver(client, suspended)).json()["duplicate"] is False
    await deliver(client, active)
    again = await deliver(client, suspended)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["status"] == "APPLIED"
    assert len(await _events(session, "evt-dup-1")) == 1
    party = await session.get(Party, "p-dup", populate_existing=True)
    assert party is not None
    assert party.status == "ACTIVE"


async def test_a_redelivered_fiat_event_adds_no_history(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await seed(
        session,
        [
            Flow(
                "one",
                ["known-h"],
                transactions=[SeedTransaction("known-h", "t-h", "DEPOSIT", "ACH", 100)],
            )
        ],
    )
    event = fiat(
        "evt-h",
        party="known-h",
        ref="t-h",
        kind="ACH_DEPOSIT",
        status="COMPLETE",
        amount="1",
        at=T0,
    )
    for _ in range(3):
        assert (await deliver(client, event)).status_code == 200
    count = (
        await session.execute(
            select(func.count())
            .select_from(TransactionHistory)
            .where(TransactionHistory.event_id == "evt-h")
        )
    ).scalar_one()
    assert count == 1


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"this is not json", "not JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (json.dumps({"partnerWebhookType": "PARTY_EVENT"}).encode(), "requestId"),
        (
            json.dumps(
                {"requestId": "evt-m", "partnerWebhookType": "FIAT_EVENT", "partnerPartyRef": "p",
                 "eventTime": "2026-11-20T15:00:00Z", "partnerTransactionRef": "t"}
            ).encode(),
            "fiatTransactionType",
        ),
    ],
)  # fmt: skip
async def test_a_verified_but_malformed_body_is_stored_flagged_and_answered_2xx(
    client: httpx.AsyncClient, session: AsyncSession, body: bytes, why: str
) -> None:
    headers = signed_headers(body, msg_id="evt-malformed")
    response = await client.post(URL, content=body, headers=headers)
    assert response.status_code == 200
    assert response.json()["status"] == "MALFORMED"
    [row] = await _events(session, "evt-malformed")
    assert row.status == "MALFORMED"
    assert row.needs_operator
    assert row.body == body
    assert why in (row.outcome or "")
    [alert] = await _alerts(session, "webhook_malformed")
    assert alert.subject == "webhook evt-malformed"
    again = await client.post(URL, content=body, headers=headers)
    assert again.json()["duplicate"] is True
    assert len(await _alerts(session, "webhook_malformed")) == 1


async def test_an_unknown_webhook_type_is_kept_and_flagged(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    event = {
        "requestId": "evt-new-type",
        "partnerPartyRef": "p-new",
        "partnerWebhookType": "TPJ_EVENT",
        "eventTime": "2026-11-20T15:00:00Z",
        "whatever": 1,
    }
    response = await deliver(client, event)
    assert response.status_code == 200
    assert response.json()["status"] == "IGNORED"
    [row] = await _events(session, "evt-new-type")
    assert row.event_type == "TPJ_EVENT"
    assert row.needs_operator
    assert len(await _alerts(session, "webhook_unknown_type")) == 1


async def test_outcomes_are_counted_in_the_metrics(harness: HarnessFactory) -> None:
    event = party_event("evt-count", party="p-count", status="ACTIVE", reason="ENROLLMENT", at=T0)
    async with harness() as h:
        await deliver(h.http, event)
        await deliver(h.http, event)
        metrics = h.app.state.metrics
        assert metrics.value("webhooks_received_total", outcome="applied") == 1
        assert metrics.value("webhooks_received_total", outcome="duplicate") == 1
        assert metrics.value("webhooks_received_total") == 2


async def test_secrets_never_reach_the_log(
    harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    event = party_event("evt-log", party="p-log", status="ACTIVE", reason="ENROLLMENT", at=T0)
    body = encode(event)
    headers = signed_headers(body, msg_id="evt-log")
    with caplog.at_level(logging.DEBUG):
        async with harness(webhook_static_token=SecretStr("tok-very-secret")) as h:
            await h.http.post(
                URL, content=body, headers={**headers, "x-webhook-token": "tok-wrong-1"}
            )
            await h.http.post(
                URL, content=body + b" ", headers={**headers, "x-webhook-token": "tok-very-secret"}
            )
            await h.http.post(
                URL, content=body, headers={**headers, "x-webhook-token": "tok-very-secret"}
            )
    text = caplog.text
    assert "webhook refused: webhook_token_invalid" in text
    for secret in ["tok-very-secret", "tok-wrong-1", headers["webhook-signature"][3:]]:
        assert secret not in text


async def test_the_token_is_not_stored_with_the_event(
    harness: HarnessFactory, session: AsyncSession
) -> None:
    event = party_event("evt-tok", party="p-tok", status="ACTIVE", reason="ENROLLMENT", at=T0)
    body = encode(event)
    headers = {**signed_headers(body, msg_id="evt-tok"), "x-webhook-token": "tok-123456"}
    async with harness(webhook_static_token=SecretStr("tok-123456")) as h:
        assert (await h.http.post(URL, content=body, headers=headers)).status_code == 200
    [row] = await _events(session, "evt-tok")
    assert "x-webhook-token" not in row.headers
    assert "tok-123456" not in json.dumps(row.headers)
