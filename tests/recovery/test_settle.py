"""Settling unknown outcomes: look the transfer up at Bakkt, adopt its answer, or re-send it with
the same key while Bakkt keeps that key, else fail it with a clear reason."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bakkt import BakktClient, BakktOutcomeUnknown
from app.bakkt.setup import bakkt_config
from app.config import Settings
from app.core.metrics import Metrics
from app.idempotency.finisher import finish_abandoned_requests
from app.recovery.settle import KEY_EXPIRED, WIRE_NOT_RETAINED, settle_unknown
from bakkt_sandbox.config import FaultMode
from bakkt_sandbox.testing import RunningSandbox
from tests.recovery.conftest import Isolate
from tests.recovery.helpers import (
    Execute,
    add_transfer,
    db_now,
    history_of,
    link_at_bakkt,
    row_of,
)

Factory = async_sessionmaker[AsyncSession]


async def test_unknown_outcome_found_at_bakkt_is_adopted(
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    rsettings: Settings,
    sandbox: RunningSandbox,
    party: str,
    isolate: Isolate,
    metrics: Metrics,
) -> None:
    await link_at_bakkt(bakkt, party)
    pending = await add_transfer(sql, party, status="UNKNOWN")
    completed = await add_transfer(sql, party, status="UNKNOWN", cents=3000)
    for row in (pending, completed):
        await bakkt.transfer(row.request())
    await sandbox.settle(completed.ref)
    await isolate(party)

    assert await settle_unknown(factory, bakkt, rsettings, metrics=metrics) == 2

    assert (await row_of(sql, pending.id))["status"] == "PENDING"
    assert (await row_of(sql, completed.id))["status"] == "COMPLETED"
    assert (await history_of(sql, pending.id))[-1] == ("UNKNOWN", "PENDING", "sync", True)
    assert metrics.value("recovery_settled_unknown_total") == 2
    # Adopted, not re-sent: each transfer was requested once.
    ledger = await sandbox.transfers(party)
    assert sorted(t["requestCount"] for t in ledger) == [1, 1]
    assert metrics.value("recovery_resent_total") == 0


@pytest.mark.parametrize("mode", ["error", "drop"], ids=["5xx-before", "drop-before"])
async def test_unknown_never_seen_is_resent_with_the_same_key_exactly_once(
    mode: FaultMode,
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    rsettings: Settings,
    sandbox: RunningSandbox,
    party: str,
    isolate: Isolate,
    metrics: Metrics,
) -> None:
    await link_at_bakkt(bakkt, party)
    row = await add_transfer(sql, party, status="UNKNOWN")
    # The API's own call: every attempt fails before Bakkt records anything.
    await sandbox.set_fault(
        "transferFiatCurrency", mode, count=rsettings.bakkt_transfer_max_attempts
    )
    with pytest.raises(BakktOutcomeUnknown):
        await bakkt.transfer(row.request())
    assert await sandbox.transfers(party) == []
    await isolate(party)

    await settle_unknown(factory, bakkt, rsettings, metrics=metrics)

    after = await row_of(sql, row.id)
    assert after["status"] == "PENDING"
    assert after["submit_attempts"] == 2
    ledger = await sandbox.transfers(party)
    assert [(t["partnerTransactionRef"], t["idempotencyKey"]) for t in ledger] == [
        (row.ref, row.key)
    ]
    assert ledger[0]["requestCount"] == 1
    assert metrics.value("recovery_resent_total") == 1

    # Settling again changes nothing at Bakkt: the transfer is found, never sent twice.
    await sql(
        "UPDATE transactions SET status = 'UNKNOWN', next_check_at = NULL WHERE id = :id",
        {"id": row.id},
    )
    await settle_unknown(factory, bakkt, rsettings, metrics=metrics)
    assert [t["requestCount"] for t in await sandbox.transfers(party)] == [1]


async def test_resent_transfer_rejected_by_bakkt_fails_with_its_code(
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    rsettings: Settings,
    sandbox: RunningSandbox,
    party: str,
    isolate: Isolate,
    metrics: Metrics,
) -> None:
    await link_at_bakkt(bakkt, party)
    # A withdrawal of money the party does not have at Bakkt.
    row = await add_transfer(sql, party, status="UNKNOWN", type_="WITHDRAWAL", cents=50_000)
    await isolate(party)

    await settle_unknown(factory, bakkt, rsettings, metrics=metrics)

    after = await row_of(sql, row.id)
    assert (after["status"], after["reason_code"]) == ("FAILED", "insufficient_balance")
    assert after["next_check_at"] is None
    assert await sandbox.transfers(party) == []
    assert metrics.value("recovery_resend_rejected_total") == 1


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        pytest.param(timedelta(days=10, hours=1), "FAILED", id="key-gone-at-bakkt"),
        pytest.param(timedelta(days=9, hours=1), "FAILED", id="within-the-safety-margin"),
        pytest.param(timedelta(days=8), "PENDING", id="key-still-alive"),
    ],
)
async def test_never_seen_transfer_past_its_key_lifetime_fails_without_sending(
    age: timedelta,
    expected: str,
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    rsettings: Settings,
    sandbox: RunningSandbox,
    party: str,
    isolate: Isolate,
    metrics: Metrics,
) -> None:
    await link_at_bakkt(bakkt, party)
    row = await add_transfer(sql, party, status="UNKNOWN", age=age)
    await isolate(party)

    await settle_unknown(factory, bakkt, rsettings, metrics=metrics)

    after = await row_of(sql, row.id)
    assert after["status"] == expected
    if expected == "FAILED":
        assert after["reason_code"] == KEY_EXPIRED
        assert await sandbox.transfers(party) == []
        assert metrics.value("recovery_failed_expired_total") == 1
    else:
        assert len(await sandbox.transfers(party)) == 1


async def test_submitting_orphan_is_settled_after_the_grace_period_only(
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    rsettings: Settings,
    sandbox: RunningSandbox,
    party: str,
    isolate: Isolate,
    metrics: Metrics,
) -> None:
    await link_at_bakkt(bakkt, party)
    grace = timedelta(seconds=rsettings.recovery_submitting_grace)
    # The process died after writing the intent: one before the call, one after Bakkt took it.
    never_sent = await add_transfer(sql, party, status="SUBMITTING", age=grace * 2)
    sent = await add_transfer(sql, party, status="SUBMITTING", age=grace * 2, cents=2600)
    await bakkt.transfer(sent.request())
    # Its request may still be talking to Bakkt: left alone.
    young = await add_transfer(sql, party, status="SUBMITTING", age=grace / 4, cents=2700)
    await isolate(party)

    await settle_unknown(factory, bakkt, rsettings, metrics=metrics)

    assert (await row_of(sql, never_sent.id))["status"] == "PENDING"
    assert (await row_of(sql, sent.id))["status"] == "PENDING"
    assert (await row_of(sql, young.id))["status"] == "SUBMITTING"
    by_ref = {t["partnerTransactionRef"]: t for t in await sandbox.transfers(party)}
    assert set(by_ref) == {never_sent.ref, sent.ref}
    assert all(t["requestCount"] == 1 for t in by_ref.values())
    assert metrics.value("recovery_resent_total") == 1
    assert metrics.value("recovery_settled_unknown_total") == 1


async def test_wire_withdrawal_bakkt_never_saw_fails_as_not_retained(
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    rsettings: Settings,
    sandbox: RunningSandbox,
    party: str,
    isolate: Isolate,
    metrics: Metrics,
) -> None:
    grace = timedelta(seconds=rsettings.recovery_submitting_grace)
    old = await add_transfer(
        sql, party, status="UNKNOWN", type_="WITHDRAWAL", method="WIRE", age=grace * 2
    )
    # Young enough that the consumer's retry (which carries the destination) may still come.
    young = await add_transfer(
        sql, party, status="UNKNOWN", type_="WITHDRAWAL", method="WIRE", age=grace / 4
    )
    await isolate(party)

    await settle_unknown(factory, bakkt, rsettings, metrics=metrics)

    failed = await row_of(sql, old.id)
    assert (failed["status"], failed["reason_code"]) == ("FAILED", WIRE_NOT_RETAINED)
    waiting = await row_of(sql, young.id)
    assert waiting["status"] == "UNKNOWN"
    assert waiting["next_check_at"] is not None
    assert await sandbox.transfers(party) == []
    assert metrics.value("recovery_failed_wire_not_retained_total") == 1


async def test_outcome_still_unknown_backs_off_and_submitting_becomes_unknown(
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    rsettings: Settings,
    sandbox: RunningSandbox,
    party: str,
    isolate: Isolate,
    metrics: Metrics,
) -> None:
    grace = timedelta(seconds=rsettings.recovery_submitting_grace)
    row = await add_transfer(sql, party, status="SUBMITTING", age=grace * 2)
    await sandbox.set_fault("getTransaction", "error", status=503)
    await isolate(party)
    base = rsettings.recovery_unknown_backoff_base

    for attempt in (1, 2, 3):
        now = await db_now(sql)
        await settle_unknown(factory, bakkt, rsettings, now=now, metrics=metrics)
        after = await row_of(sql, row.id)
        assert after["status"] == "UNKNOWN"
        assert after["check_attempts"] == attempt
        assert after["next_check_at"] - now == timedelta(seconds=base * 2 ** (attempt - 1))
        await sql(
            "UPDATE transactions SET next_check_at = now() - interval '1 second' WHERE id = :id",
            {"id": row.id},
        )

    assert [h[:3] for h in await history_of(sql, row.id)] == [
        (None, "SUBMITTING", "api"),
        ("SUBMITTING", "UNKNOWN", "sync"),
    ]
    assert await sandbox.transfers(party) == []
    assert metrics.value("recovery_still_unknown_total") == 3


async def test_two_workers_settling_at_once_never_process_a_transaction_twice(
    live_sql: Execute,
    live_factory: Factory,
    fence: object,
    rsettings: Settings,
    sandbox: RunningSandbox,
    party: str,
) -> None:
    async with (
        BakktClient(bakkt_config(rsettings)) as first,
        BakktClient(bakkt_config(rsettings)) as second,
    ):
        await link_at_bakkt(first, party)
        rows = [
            await add_transfer(live_sql, party, status="UNKNOWN", cents=1000 + i) for i in range(20)
        ]
        await fence(party)  # type: ignore[operator]
        # Slow Bakkt down so that both workers are in flight together; each fault counts the
        # requests it sees.
        lookups = await sandbox.set_fault("getTransaction", "latency", latency_ms=30)
        sends = await sandbox.set_fault("transferFiatCurrency", "latency", latency_ms=30)
        metrics = Metrics()
        pooled = rsettings.model_copy(update={"recovery_concurrency": 4})

        claimed = await asyncio.gather(
            settle_unknown(live_factory, first, pooled, limit=15, metrics=metrics),
            settle_unknown(live_factory, second, pooled, limit=15, metrics=metrics),
        )

    assert sum(claimed) == 20
    by_id = {f["id"]: f for f in await sandbox.faults()}
    assert by_id[lookups["id"]]["seen"] == 20
    assert by_id[sends["id"]]["seen"] == 20
    ledger = await sandbox.transfers(party)
    assert sorted(t["partnerTransactionRef"] for t in ledger) == sorted(r.ref for r in rows)
    assert all(t["requestCount"] == 1 for t in ledger)
    for row in rows:
        assert (await row_of(live_sql, row.id))["status"] == "PENDING"
        syncs = [h for h in await history_of(live_sql, row.id) if h[2] == "sync"]
        assert syncs == [("UNKNOWN", "PENDING", "sync", True)]
    assert metrics.value("recovery_resent_total") == 20


async def _add_key(run: Execute, party: str, txn_id: str, *, lease: timedelta) -> int:
    rows = await run(
        "INSERT INTO idempotency_keys (party_ref, key, request_method, request_path, fingerprint, "
        "recovery_point, locked_until, transaction_id, expires_at) VALUES (:p, :k, 'POST', "
        "'/v1/parties/x/deposits', 'f', 'intent_written', now() + CAST(:lease AS interval), "
        "CAST(:t AS uuid), now() + interval '10 days') RETURNING id",
        {"p": party, "k": f"key-{txn_id}", "t": txn_id, "lease": lease},
    )
    return int(rows[0][0])


async def test_abandoned_consumer_request_is_finished_once_its_transaction_settles(
    sql: Execute,
    factory: Factory,
    party: str,
    isolate: Isolate,
    metrics: Metrics,
) -> None:
    settled = await add_transfer(sql, party, status="PENDING")
    unsettled = await add_transfer(sql, party, status="UNKNOWN")
    retried = await add_transfer(sql, party, status="COMPLETED")
    abandoned = await _add_key(sql, party, settled.id, lease=timedelta(minutes=-1))
    waiting = await _add_key(sql, party, unsettled.id, lease=timedelta(minutes=-1))
    # A consumer's retry holds this one right now: it answers for itself.
    live = await _add_key(sql, party, retried.id, lease=timedelta(minutes=1))
    await isolate(party)

    assert await finish_abandoned_requests(factory, metrics=metrics) == 1

    keys = {
        r[0]: (r[1], r[2], r[3])
        for r in await sql(
            "SELECT id, recovery_point, response_status, response_body FROM idempotency_keys "
            "WHERE id = ANY(:ids)",
            {"ids": [abandoned, waiting, live]},
        )
    }
    point, status, body = keys[abandoned]
    assert (point, status) == ("finished", 202)
    assert (body["id"], body["status"]) == (settled.id, "PENDING")
    assert keys[waiting][:2] == ("intent_written", None)
    assert keys[live][:2] == ("intent_written", None)
    assert metrics.value("recovery_requests_finished_total") == 1
