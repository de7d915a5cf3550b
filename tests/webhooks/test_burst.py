"""A burst: hundreds of deliveries at once (each event several times) against a real pool, as
Bakkt does after an outage on its side. No errors, each event stored once, applied once, and the
same end state as a calm in-order delivery."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.alerts.models import OperatorAlert
from app.funding.models import Party, Transaction, TransactionHistory
from app.webhooks.models import WebhookEvent
from tests.webhooks.events import T0, Flow, deliver, fiat, final_state, flows, party_event, seed


def _normalized(value: Any, ns: str) -> Any:
    if isinstance(value, str):
        return value.replace(f"-{ns}", "")
    if isinstance(value, dict):
        return {_normalized(k, ns): _normalized(v, ns) for k, v in value.items()}
    return value


def _extra_events(ns: str) -> list[dict[str, Any]]:
    """Contention on single rows: many events for one party, many new wires for another."""
    party, wires = f"busy-{ns}", f"wires-{ns}"
    statuses = ["ACTIVE", "SUSPENDED", "UNDER_REVIEW", "ACTIVE", "SUSPENDED"] * 6
    out = [
        party_event(
            f"busy-{ns}-{i}", party=party, status=s, reason="OTHER", at=T0 + timedelta(seconds=i)
        )
        for i, s in enumerate(statuses)
    ]
    for i in range(25):
        ref = f"bakkt-wire-{i}-{ns}"
        for step, status in enumerate(["PENDING", "COMPLETE"]):
            out.append(
                fiat(
                    f"wire-{ns}-{i}-{step}", party=wires, ref=ref, kind="WIRE_DEPOSIT",
                    status=status, amount="100.00", at=T0 + timedelta(seconds=step),
                )
            )  # fmt: skip
    return out


def _parties(fs: list[Flow], ns: str) -> list[str]:
    return sorted({p for f in fs for p in f.parties} | {f"busy-{ns}", f"wires-{ns}"})


async def _seed(engine: AsyncEngine, fs: list[Flow]) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as session:
        await seed(session, fs)


async def test_hundreds_of_concurrent_deliveries_store_each_event_once_and_apply_it_once(
    live_client: httpx.AsyncClient, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    calm_ns, burst_ns = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]

    calm_flows = flows(calm_ns)
    await _seed(engine, calm_flows)
    for event in [e for f in calm_flows for e in f.events] + _extra_events(calm_ns):
        assert (await deliver(live_client, event)).status_code == 200

    burst_flows = flows(burst_ns)
    await _seed(engine, burst_flows)
    events = [e for f in burst_flows for e in f.events] + _extra_events(burst_ns)
    rng = random.Random(burst_ns)
    deliveries = [e for e in events for _ in range(rng.randint(2, 4))]
    rng.shuffle(deliveries)
    assert len(deliveries) >= 300

    # In flight at once: fewer than the test engine's 40 connections. With all 300+ at once the
    # last ones queue for a connection, and on a loaded machine the queue outlasts the pool's
    # timeout (a 503 that says nothing about the receiver); 32 still race on every row.
    in_flight = asyncio.Semaphore(32)

    async def deliver_bounded(event: dict[str, Any]) -> httpx.Response:
        async with in_flight:
            return await deliver(live_client, event)

    with caplog.at_level(logging.WARNING, logger="app.webhooks"):
        responses = await asyncio.gather(*(deliver_bounded(e) for e in deliveries))

    assert Counter(r.status_code for r in responses) == {200: len(deliveries)}
    assert "failed" not in caplog.text
    # Exactly one delivery of each event got to store it.
    firsts = Counter(r.json()["requestId"] for r in responses if not r.json()["duplicate"])
    assert firsts == dict.fromkeys(firsts, 1)
    assert set(firsts) == {e["requestId"] for e in events}

    request_ids = [str(e["requestId"]) for e in events]
    async with AsyncSession(engine) as session:
        stored = (
            await session.execute(
                select(WebhookEvent.request_id, WebhookEvent.status).where(
                    WebhookEvent.request_id.in_(request_ids)
                )
            )
        ).all()
        assert sorted(r.request_id for r in stored) == sorted(request_ids)
        assert {r.status for r in stored} <= {"APPLIED", "IGNORED"}

        # Applied once: one history row per (transaction, event), and as many applied moves
        # as the calm run made.
        def applied_moves(ns: str) -> Any:
            return (
                select(func.count())
                .select_from(TransactionHistory)
                .join(Transaction, Transaction.id == TransactionHistory.transaction_id)
                .where(
                    Transaction.party_ref.in_(_parties(flows(ns), ns)),
                    TransactionHistory.source == "webhook",
                )
            )

        burst_history = (await session.execute(applied_moves(burst_ns))).scalar_one()
        assert burst_history == sum(1 for e in events if e["partnerWebhookType"] == "FIAT_EVENT"), (
            "one history row per FIAT_EVENT, however often it was delivered"
        )
        wires = (
            await session.execute(
                select(func.count())
                .select_from(Transaction)
                .where(Transaction.party_ref == f"wires-{burst_ns}")
            )
        ).scalar_one()
        assert wires == 25
        alerts = (
            await session.execute(
                select(func.count())
                .select_from(OperatorAlert)
                .where(OperatorAlert.created_at >= func.now() - timedelta(minutes=5))
                .where(OperatorAlert.subject.contains(burst_ns))
            )
        ).scalar_one()
        assert alerts == 0
        busy = await session.get(Party, f"busy-{burst_ns}")
        assert busy is not None
        assert busy.status_event_time == T0 + timedelta(seconds=29)

    async with engine.connect() as conn:
        calm = await final_state(conn, _parties(calm_flows, calm_ns))
        burst = await final_state(conn, _parties(burst_flows, burst_ns))
    assert _normalized(burst, burst_ns) == _normalized(calm, calm_ns)


async def test_one_event_delivered_two_hundred_times_at_once_is_stored_and_applied_once(
    live_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ns = uuid.uuid4().hex[:8]
    event = fiat(
        f"same-{ns}", party=f"same-{ns}", ref=f"bakkt-wire-same-{ns}", kind="WIRE_DEPOSIT",
        status="COMPLETE", amount="75.00", at=T0,
    )  # fmt: skip
    responses = await asyncio.gather(*(deliver(live_client, event) for _ in range(200)))
    assert Counter(r.status_code for r in responses) == {200: 200}
    assert sum(1 for r in responses if not r.json()["duplicate"]) == 1
    async with AsyncSession(engine) as session:
        stored = await session.execute(
            select(func.count())
            .select_from(WebhookEvent)
            .where(WebhookEvent.request_id == f"same-{ns}")
        )
        assert stored.scalar_one() == 1
        history = await session.execute(
            select(func.count())
            .select_from(TransactionHistory)
            .where(TransactionHistory.event_id == f"same-{ns}")
        )
        assert history.scalar_one() == 1
        txns = await session.execute(
            select(Transaction.status).where(Transaction.party_ref == f"same-{ns}")
        )
        assert txns.scalars().all() == ["COMPLETED"]
