"""The sweep: open transactions polled at Bakkt on a backing-off schedule, and an alert when one
stays pending past its expected settlement window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bakkt import BakktClient
from app.config import Settings
from app.core.metrics import Metrics
from app.recovery.sweep import add_business_days, settlement_deadline, sweep_pending
from bakkt_sandbox.testing import RunningSandbox
from tests.recovery.conftest import Isolate
from tests.recovery.helpers import (
    Execute,
    add_transfer,
    alerts_about,
    history_of,
    link_at_bakkt,
    row_of,
)

Factory = async_sessionmaker[AsyncSession]


async def test_still_pending_is_polled_again_after_doubling_waits_up_to_the_cap(
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    rsettings: Settings,
    party: str,
    isolate: Isolate,
    metrics: Metrics,
) -> None:
    await link_at_bakkt(bakkt, party)
    row = await add_transfer(sql, party, status="PENDING", age=timedelta(minutes=1))
    await bakkt.transfer(row.request())
    await isolate(party)

    waits = []
    now = (await row_of(sql, row.id))["next_check_at"]
    for _ in range(8):
        assert await sweep_pending(factory, bakkt, rsettings, now=now, metrics=metrics) == 1
        after = await row_of(sql, row.id)
        assert after["status"] == "PENDING"
        waits.append((after["next_check_at"] - now).total_seconds())
        # Not due before its time: a sweep a second early claims nothing.
        early = after["next_check_at"] - timedelta(seconds=1)
        assert await sweep_pending(factory, bakkt, rsettings, now=early, metrics=metrics) == 0
        now = after["next_check_at"]

    assert waits == [120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert (await row_of(sql, row.id))["check_attempts"] == 8
    # Polling a transaction that did not move writes no history.
    assert [h[2] for h in await history_of(sql, row.id)] == ["api"]
    assert metrics.value("recovery_swept_total") == 8


async def test_pending_that_bakkt_completed_is_moved_and_no_longer_polled(
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
    row = await add_transfer(sql, party, status="PENDING")
    await sql("UPDATE transactions SET status = 'SUBMITTING' WHERE id = :id", {"id": row.id})
    await bakkt.transfer(row.request())
    await sql("UPDATE transactions SET status = 'PENDING' WHERE id = :id", {"id": row.id})
    await sandbox.settle(row.ref)
    await isolate(party)

    await sweep_pending(factory, bakkt, rsettings, metrics=metrics)

    after = await row_of(sql, row.id)
    assert (after["status"], after["next_check_at"]) == ("COMPLETED", None)
    assert (await history_of(sql, row.id))[-1] == ("PENDING", "COMPLETED", "sync", True)
    assert metrics.value("recovery_sweep_moved_total") == 1


async def test_pending_past_its_settlement_window_raises_one_overdue_alert(
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    rsettings: Settings,
    party: str,
    isolate: Isolate,
    metrics: Metrics,
) -> None:
    await link_at_bakkt(bakkt, party)
    # 3 business days + the margin is at most 6 calendar days, whatever the weekday.
    late = await add_transfer(sql, party, status="PENDING", age=timedelta(days=7))
    on_time = await add_transfer(sql, party, status="PENDING", age=timedelta(hours=1), cents=2600)
    late_wire = await add_transfer(
        sql,
        party,
        status="PENDING",
        type_="WITHDRAWAL",
        method="WIRE",
        age=timedelta(hours=rsettings.overdue_wire_hours + 1),
        cents=2700,
    )
    for row in (late, on_time):
        await bakkt.transfer(row.request())
    await isolate(party)
    # The wire is not at Bakkt (unknown there); it is overdue all the same.

    for _ in range(3):
        await sweep_pending(factory, bakkt, rsettings, metrics=metrics)
        await sql(
            "UPDATE transactions SET next_check_at = now() - interval '1 second' "
            "WHERE party_ref = :p AND status = 'PENDING'",
            {"p": party},
        )

    assert await alerts_about(sql, "transaction_overdue", late.id) == 1
    assert await alerts_about(sql, "transaction_overdue", late_wire.id) == 1
    assert await alerts_about(sql, "transaction_overdue", on_time.id) == 0
    assert await alerts_about(sql, "transaction_missing_at_bakkt", late_wire.id) == 1
    assert metrics.value("recovery_overdue_alerts_total") == 2


def test_settlement_windows_by_method_and_direction(rsettings: Settings) -> None:
    friday = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert friday.weekday() == 4
    assert add_business_days(friday, 3) == datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    assert settlement_deadline("DEPOSIT", "ACH", friday, rsettings) == datetime(
        2026, 12, 3, 10, 0, tzinfo=UTC
    )
    assert settlement_deadline("WITHDRAWAL", "ACH", friday, rsettings) == friday + timedelta(
        hours=24
    )
    assert settlement_deadline("WITHDRAWAL", "WIRE", friday, rsettings) == friday + timedelta(
        hours=24
    )
    assert settlement_deadline("DEPOSIT", "WIRE", friday, rsettings) == friday + timedelta(hours=24)
