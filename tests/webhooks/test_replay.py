"""Every flow of docs/bakkt-contract.md A5 replayed through the real endpoint: in order, and then
shuffled with every event delivered two or three times. Bakkt delivers at least once and in any
order, so the end state must not depend on either."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.alerts.models import OperatorAlert
from app.config import Settings
from app.db import create_session_factory
from app.main import create_app
from app.webhooks.models import WebhookEvent
from tests.webhooks.events import deliver, final_state, flows, seed

FLOWS = flows()
PARTIES = sorted({p for f in FLOWS for p in f.parties})
EVENTS = [e for f in FLOWS for e in f.events]
REQUEST_IDS = [str(e["requestId"]) for e in EVENTS]


@pytest.fixture(scope="module")
async def replay_app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        yield app


async def _replay(
    app: FastAPI, engine: AsyncEngine, deliveries: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Seed the partner's rows, deliver, read the end state; all inside one rolled-back
    transaction, so every run starts from the same empty database."""
    async with engine.connect() as conn:
        outer = await conn.begin()
        try:
            factory = create_session_factory(conn)  # type: ignore[arg-type]
            factory.configure(join_transaction_mode="create_savepoint")
            app.state.session_factory = factory
            async with factory() as session:
                await seed(session, FLOWS)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                for event in deliveries:
                    response = await deliver(http, event)
                    assert response.status_code == 200, response.text
            await _assert_clean_intake(conn)
            return await final_state(conn, PARTIES)
        finally:
            await outer.rollback()


async def _assert_clean_intake(conn: AsyncConnection) -> None:
    rows = await conn.execute(
        select(WebhookEvent.request_id, WebhookEvent.status, WebhookEvent.needs_operator).where(
            WebhookEvent.request_id.in_(REQUEST_IDS)
        )
    )
    stored = {r.request_id: r for r in rows}
    # Each event stored exactly once (request_id is unique), and none left waiting.
    assert sorted(stored) == sorted(REQUEST_IDS)
    assert {r.status for r in stored.values()} <= {"APPLIED", "IGNORED"}
    assert not any(r.needs_operator for r in stored.values())
    # Alerts raised in this run's own transaction (now() is its start): others' committed
    # tests (the burst, the conflicting pairs) leave theirs behind in the shared database.
    alerts = await conn.execute(
        select(func.count())
        .select_from(OperatorAlert)
        .where(OperatorAlert.created_at >= func.now())
    )
    assert alerts.scalar_one() == 0


_reference: dict[str, Any] = {}


async def _in_order(app: FastAPI, engine: AsyncEngine) -> dict[str, Any]:
    if not _reference:
        _reference.update(await _replay(app, engine, EVENTS))
    return _reference


async def test_in_order_every_flow_ends_where_bakkt_left_it(
    replay_app: FastAPI, engine: AsyncEngine
) -> None:
    state = await _in_order(replay_app, engine)
    txns, accounts, parties = state["transactions"], state["accounts"], state["parties"]
    for flow in FLOWS:
        for ref, status in flow.expect_transactions.items():
            assert txns[ref]["status"] == status, (flow.name, ref)
        for ref, status in flow.expect_accounts.items():
            assert accounts[ref]["status"] == status, (flow.name, ref)
        for ref, status in flow.expect_parties.items():
            assert parties[ref]["status"] == status, (flow.name, ref)

    # A few details the statuses alone do not show.
    assert txns["t-dec"]["reason_code"] == "RISK_DECLINED"
    assert txns["t-rb"]["reason_code"] == "R02"
    assert accounts["link-rb"]["reason_code"] == "R02"
    assert txns["t-ra"]["reason_code"] == "R10"
    assert accounts["link-ra"]["needs_review"] is True
    fee = txns["bakkt-fee-ra"]
    assert (fee["type"], fee["origin"], fee["related_ref"], fee["amount_cents"]) == (
        "RETURN_FEE",
        "BAKKT",
        "t-ra",
        1500,
    )
    wire = txns["bakkt-wire-in"]
    assert (wire["type"], wire["method"], wire["origin"], wire["amount_cents"]) == (
        "DEPOSIT",
        "WIRE",
        "BAKKT",
        100_000,
    )
    assert txns["bakkt-wo"]["related_ref"] == "t-wo"
    assert (parties["liq"]["status_reason"], parties["known-sus"]["status_reason"]) == (
        "LIQUIDATED",
        "ENROLLMENT",
    )
    hosted = accounts["link-hosted"]
    assert (hosted["link_method"], hosted["account_mask"], hosted["bank_name"]) == (
        "HOSTED",
        "4321",
        "Second Wombat Bank",
    )
    assert accounts["link-bad"]["reason_code"] == "UNSUPPORTED_FINANCIAL_INSTITUTION"
    assert not any(t["held_for_review"] for t in txns.values())


async def test_reversed_and_tripled_ends_in_the_same_state(
    replay_app: FastAPI, engine: AsyncEngine
) -> None:
    expected = await _in_order(replay_app, engine)
    deliveries = [e for e in reversed(EVENTS) for _ in range(3)]
    assert await _replay(replay_app, engine, deliveries) == expected


@st.composite
def _shuffled_redeliveries(draw: st.DrawFn) -> list[dict[str, Any]]:
    copies = draw(st.lists(st.integers(2, 3), min_size=len(EVENTS), max_size=len(EVENTS)))
    deliveries = [e for e, n in zip(EVENTS, copies, strict=True) for _ in range(n)]
    seed_ = draw(st.integers(0, 2**32 - 1))
    random.Random(seed_).shuffle(deliveries)
    return deliveries


@settings(
    # Each example replays ~80 deliveries through the endpoint; raise it for a longer soak.
    max_examples=int(os.environ.get("WEBHOOK_REPLAY_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(deliveries=_shuffled_redeliveries())
async def test_any_order_with_redeliveries_ends_in_the_in_order_state(
    replay_app: FastAPI, engine: AsyncEngine, deliveries: list[dict[str, Any]]
) -> None:
    expected = await _in_order(replay_app, engine)
    assert await _replay(replay_app, engine, deliveries) == expected


async def test_the_seed_helper_leaves_nothing_behind(
    replay_app: FastAPI, engine: AsyncEngine
) -> None:
    # The replays share one database and each seeds the same refs: a row one of them left behind
    # would change what the next one reads. Replay here, so the test has rows to check for even
    # when it runs alone.
    during = await _replay(replay_app, engine, EVENTS)
    assert set(during["parties"]) == set(PARTIES)
    assert during["transactions"]
    assert during["accounts"]
    async with engine.connect() as conn:
        after = await final_state(conn, PARTIES)
        events = await conn.execute(
            select(func.count())
            .select_from(WebhookEvent)
            .where(WebhookEvent.request_id.in_(REQUEST_IDS))
        )
        stored_events = events.scalar_one()
    assert after == {"transactions": {}, "accounts": {}, "parties": {}}
    assert stored_events == 0
