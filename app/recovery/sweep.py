"""The pending sweep: poll PENDING transactions whose webhook is late or lost, and flag the ones
past their settlement window. docs/recovery.md has the rules and the why."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.service import AlertSpec, add_alert_once
from app.bakkt import BakktClient, BakktError, BakktTransaction
from app.bakkt.breaker import CircuitOpen
from app.config import Settings
from app.core.metrics import METRICS, Metrics
from app.funding import bakkt_sync
from app.funding import repository as funding_repo
from app.funding.bakkt_sync import BakktReport, Verdict
from app.funding.models import HistorySource, Transaction, TransactionMethod, TransactionType
from app.funding.models import TransactionStatus as Status
from app.recovery.jobs import (
    ClaimedTransaction,
    JobRun,
    SessionFactory,
    back_off,
    bounded,
    circuit_open,
    cycle_start,
    raise_alert,
    schedule_after_move,
)

log = logging.getLogger("app.recovery")


def add_business_days(start: datetime, days: int) -> datetime:
    """`start` plus `days` weekdays (bank holidays are not modelled; the margin covers them)."""
    current = start
    added = 0
    while added < days:
        current += timedelta(days=1)
        if current.weekday() < 5:
            added += 1
    return current


def settlement_deadline(
    type_: str, method: str | None, created_at: datetime, settings: Settings
) -> datetime:
    """When a pending transaction is overdue: ACH deposits after N business days plus a margin,
    wires (either way) after `overdue_wire_hours`, everything else (ACH withdrawals, fees,
    adjustments) after `overdue_ach_withdrawal_hours`."""
    if method == TransactionMethod.ACH and type_ == TransactionType.DEPOSIT:
        return add_business_days(created_at, settings.overdue_ach_deposit_business_days) + (
            timedelta(hours=settings.overdue_ach_deposit_margin_hours)
        )
    if method == TransactionMethod.WIRE:
        return created_at + timedelta(hours=settings.overdue_wire_hours)
    return created_at + timedelta(hours=settings.overdue_ach_withdrawal_hours)


async def sweep_pending(
    session_factory: SessionFactory,
    bakkt: BakktClient,
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int | None = None,
    metrics: Metrics | None = None,
) -> int:
    """One cycle: poll due PENDING transactions at Bakkt and adopt what it reports. One still
    pending is looked at again after 2x the last wait (first after `recovery_sweep_first_check`,
    capped at `recovery_sweep_backoff_cap`); one past its settlement window raises one
    `transaction_overdue` alert. Returns how many it claimed."""
    metrics = metrics or METRICS
    if circuit_open(bakkt):
        metrics.inc("recovery_skipped_circuit_open_total", worker="sweep")
        return 0
    now = await cycle_start(session_factory, now)
    async with session_factory() as session:
        rows = await funding_repo.claim_pending(
            session,
            now=now,
            lease_until=now + timedelta(seconds=settings.recovery_claim_lease),
            limit=limit or settings.recovery_batch_size,
        )
        claimed = [ClaimedTransaction.of(r) for r in rows]
        await session.commit()
    run = JobRun(session_factory, bakkt, settings, metrics, now)
    await bounded(claimed, settings.recovery_concurrency, lambda c: _sweep_one(run, c), job="sweep")
    return len(claimed)


async def _sweep_one(run: JobRun, c: ClaimedTransaction) -> None:
    error: BakktError | None = None
    found: BakktTransaction | None = None
    try:
        found = await run.bakkt.get_transaction(c.party_ref, c.bakkt_ref)
    except BakktError as exc:
        error = exc
    run.metrics.inc("recovery_swept_total")
    async with run.factory() as session:
        txn = await funding_repo.lock_transaction(session, c.id)
        if txn is None or txn.status != Status.PENDING:
            # Moved meanwhile (a webhook): whoever moved it owns its schedule.
            await session.rollback()
            return
        verdict: Verdict | None = None
        if isinstance(error, CircuitOpen):
            txn.next_check_at = run.now + timedelta(seconds=max(error.retry_after, 1.0))
        elif error is not None:
            log.info("sweep of %s: look-up failed: %s", c.bakkt_ref, error)
        elif found is None:
            await add_alert_once(
                session,
                AlertSpec(
                    "transaction_missing_at_bakkt",
                    f"transaction {txn.id}",
                    f"{txn.bakkt_ref} is PENDING here but Bakkt has no such transaction.",
                    {"transactionId": str(txn.id), "bakktRef": txn.bakkt_ref},
                ),
            )
            log.warning("sweep: %s is PENDING here but unknown at Bakkt", txn.bakkt_ref)
        else:
            report = BakktReport(
                found,
                HistorySource.SYNC,
                at=found.updated_at,
                context="sweep",
                note="sweep: polled at Bakkt",
            )
            applied = await bakkt_sync.apply(session, txn, report, now=run.now)
            verdict = applied.verdict
            await raise_alert(session, applied)
        if verdict is Verdict.MOVED:
            schedule_after_move(txn, run)
            run.metrics.inc("recovery_sweep_moved_total")
            log.info("sweep: %s is now %s (its webhook is late or lost)", c.bakkt_ref, txn.status)
        elif txn.status == Status.PENDING:
            if not isinstance(error, CircuitOpen):
                back_off(txn, run, unknown=False)
            if txn.held_for_review:
                txn.next_check_at = None
            await _check_overdue(session, txn, run)
        await session.commit()


async def _check_overdue(session: AsyncSession, txn: Transaction, run: JobRun) -> None:
    deadline = settlement_deadline(txn.type, txn.method, txn.created_at, run.settings)
    if run.now < deadline:
        return
    raised = await add_alert_once(
        session,
        AlertSpec(
            "transaction_overdue",
            f"transaction {txn.id}",
            f"{txn.method or ''} {txn.type} {txn.bakkt_ref} has been PENDING since "
            f"{txn.created_at.isoformat()}, past its expected settlement by "
            f"{deadline.isoformat()}.",
            {
                "transactionId": str(txn.id),
                "bakktRef": txn.bakkt_ref,
                "partyRef": txn.party_ref,
                "createdAt": txn.created_at.isoformat(),
                "expectedBy": deadline.isoformat(),
            },
        ),
    )
    if raised:
        run.metrics.inc("recovery_overdue_alerts_total")
        log.warning("transaction %s is overdue (expected by %s)", txn.bakkt_ref, deadline)
