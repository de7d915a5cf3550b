"""Reconciliation: list what Bakkt updated since a point in time, party by party, and make our
records agree (docs/recovery.md). Run daily by whichever replica finds it due, or by hand
(`fiat-onramp reconcile`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.service import AlertSpec, add_alert_once
from app.bakkt import BakktClient, BakktError, BakktTransaction
from app.bakkt.breaker import CircuitOpen
from app.config import Settings
from app.core.clock import db_now
from app.core.metrics import METRICS, Metrics
from app.funding import bakkt_sync
from app.funding import repository as funding_repo
from app.funding.bakkt_sync import Applied, BakktReport, Verdict
from app.funding.models import HistorySource
from app.funding.models import TransactionStatus as Status
from app.funding.repository import UNSETTLED
from app.recovery import repository as repo
from app.recovery.jobs import SessionFactory, circuit_open, raise_alert

log = logging.getLogger("app.recovery")

RECONCILE_JOB = "reconcile"
# A scheduled reconciliation is left to the replica that started it this long.
RECONCILE_LEASE = timedelta(hours=2)
# A failed or interrupted scheduled reconciliation is tried again this soon, not a day later.
RECONCILE_RETRY = timedelta(minutes=15)


class Drift(StrEnum):
    """Kinds of disagreement reconciliation counts (metric label `kind`)."""

    STATUS = "status"  # Bakkt is further along than we are: a status webhook was lost
    MISSING = "missing"  # a transaction Bakkt started that we never heard of: created now
    UNKNOWN_REF = "unknown_ref"  # one of "ours" at Bakkt that we never stored: flagged
    MISMATCH = "mismatch"  # amount, currency, party or kind differ: held for review
    CONFLICT = "conflict"  # Bakkt's status cannot follow ours (say, ours FAILED): flagged


@dataclass(slots=True)
class ReconcileSummary:
    since: datetime
    parties_scanned: int = 0
    parties_failed: int = 0
    transactions_seen: int = 0
    created: int = 0
    moved: int = 0
    flagged: int = 0
    drift: dict[str, int] = field(default_factory=dict)

    @property
    def drift_total(self) -> int:
        return sum(self.drift.values())

    @property
    def ok(self) -> bool:
        return self.parties_failed == 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["since"] = self.since.isoformat()
        data["drift_total"] = self.drift_total
        return data

    def lines(self) -> list[str]:
        drift = ", ".join(f"{k} {v}" for k, v in sorted(self.drift.items())) or "none"
        return [
            f"since               {self.since.isoformat()}",
            f"parties scanned     {self.parties_scanned}"
            + (f" ({self.parties_failed} failed)" if self.parties_failed else ""),
            f"transactions seen   {self.transactions_seen}",
            f"drift               {self.drift_total} ({drift})",
            f"created             {self.created}",
            f"moved               {self.moved}",
            f"flagged             {self.flagged}",
        ]


def _drift(
    summary: ReconcileSummary, metrics: Metrics, kind: Drift, found: BakktTransaction, what: str
) -> None:
    summary.drift[kind] = summary.drift.get(kind, 0) + 1
    metrics.inc("recovery_drift_total", kind=kind)
    # The line an operator greps for: one per disagreement, naming the transaction.
    log.warning(
        "drift %s: transaction %s (party %s, %s): %s",
        kind,
        found.transaction_ref,
        found.party_ref,
        found.kind,
        what,
    )


async def reconcile(
    session_factory: SessionFactory,
    bakkt: BakktClient,
    *,
    since: datetime,
    parties: Iterable[str] | None = None,
    metrics: Metrics | None = None,
    page_size: int = 200,
) -> ReconcileSummary:
    """List every transaction Bakkt updated since `since`, party by party (all parties not
    CLOSED, and any with an open transaction, unless `parties` names them), and make our records
    agree: move known ones whose status differs, create the ones Bakkt started that we never
    heard of (inbound wires, return fees linked to their transfer, write-offs, adjustments),
    flag unknown refs of ours for an operator. Every disagreement is drift: counted in the
    summary and the `recovery_drift_total` metric, and logged at WARNING with its ref. Safe to
    run alongside the webhook receiver, the workers and another reconciliation."""
    if since.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    metrics = metrics or METRICS
    summary = ReconcileSummary(since=since)
    if parties is None:
        async with session_factory() as session:
            party_list = await funding_repo.reconcile_parties(session)
            await session.rollback()
    else:
        party_list = list(parties)
    for index, party in enumerate(party_list):
        try:
            await _reconcile_party(session_factory, bakkt, party, summary, metrics, page_size)
            summary.parties_scanned += 1
        except CircuitOpen:
            # Bakkt is down: the rest cannot be listed either; a later run covers them.
            summary.parties_failed += len(party_list) - index
            log.warning("reconcile: Bakkt circuit open; %d parties left", len(party_list) - index)
            break
        except BakktError as exc:
            summary.parties_failed += 1
            log.warning("reconcile: listing party %s failed: %s", party, exc)
    metrics.inc("recovery_reconcile_runs_total", outcome="ok" if summary.ok else "partial")
    metrics.inc("recovery_reconcile_created_total", summary.created)
    metrics.inc("recovery_reconcile_moved_total", summary.moved)
    log.info(
        "reconcile since %s: %d parties, %d transactions, drift %d %s, %d created, %d moved",
        since.isoformat(),
        summary.parties_scanned,
        summary.transactions_seen,
        summary.drift_total,
        summary.drift,
        summary.created,
        summary.moved,
    )
    return summary


async def _reconcile_party(
    factory: SessionFactory,
    bakkt: BakktClient,
    party: str,
    summary: ReconcileSummary,
    metrics: Metrics,
    page_size: int,
) -> None:
    # Fees and adjustments whose transfer we did not know when they were recorded.
    unlinked: list[tuple[str, str]] = []
    async for found in bakkt.iter_transactions(
        party, updated_since=summary.since, page_size=page_size
    ):
        summary.transactions_seen += 1
        # One short transaction per item, none open while the next page is fetched.
        async with factory() as session:
            now = await db_now(session)
            await _reconcile_one(session, found, summary, metrics, unlinked, now)
            await session.commit()
    if unlinked:
        async with factory() as session:
            await bakkt_sync.link_later(session, unlinked, now=await db_now(session))
            await session.commit()


async def _reconcile_one(
    session: AsyncSession,
    found: BakktTransaction,
    summary: ReconcileSummary,
    metrics: Metrics,
    unlinked: list[tuple[str, str]],
    now: datetime,
) -> None:
    report = BakktReport(
        found,
        HistorySource.SYNC,
        at=found.updated_at,
        context="reconciliation",
        note="reconciliation: Bakkt's record differs",
        creation_note=f"found by reconciliation ({found.kind}); its webhook was lost",
    )
    applied = await bakkt_sync.record(session, report, now=now)
    verdict, txn = applied.verdict, applied.txn
    if verdict is Verdict.NOT_FOUND:
        await _flag_unknown(session, found, summary, metrics)
    elif verdict in (Verdict.UNREADABLE, Verdict.UNRECORDABLE):
        log.warning("reconcile: cannot record %s (%s)", found.transaction_ref, found)
    elif verdict is Verdict.CREATED and txn is not None:
        summary.created += 1
        _drift(summary, metrics, Drift.MISSING, found, f"created as {txn.type} {txn.status}")
    elif verdict is Verdict.MOVED and txn is not None:
        summary.moved += 1
        _drift(summary, metrics, Drift.STATUS, found, f"{found.status}, we had it otherwise")
        if txn.status == Status.PENDING:
            txn.check_attempts = 0
            txn.next_check_at = now
        elif txn.status not in UNSETTLED:
            txn.next_check_at = None
    elif verdict is Verdict.HELD:
        _flag(summary, metrics, Drift.MISMATCH, found, applied, applied.mismatch or "")
    elif verdict is Verdict.CONFLICT and txn is not None:
        _flag(summary, metrics, Drift.CONFLICT, found, applied, f"ours is {txn.status}")
    await raise_alert(session, applied)
    if txn is not None and applied.unlinked_related:
        unlinked.append((txn.bakkt_ref, applied.unlinked_related))


def _flag(
    summary: ReconcileSummary,
    metrics: Metrics,
    kind: Drift,
    found: BakktTransaction,
    applied: Applied,
    what: str,
) -> None:
    # A transaction already held is not counted again on every run.
    if applied.alert is not None:
        summary.flagged += 1
        _drift(summary, metrics, kind, found, what)


async def _flag_unknown(
    session: AsyncSession, found: BakktTransaction, summary: ReconcileSummary, metrics: Metrics
) -> None:
    """One of "ours" at Bakkt (a kind we start) that we never stored: an operator looks."""
    if await add_alert_once(
        session,
        AlertSpec(
            "reconcile_unknown_transaction",
            f"bakkt transaction {found.transaction_ref}",
            f"Bakkt lists {found.kind} {found.transaction_ref} ({found.amount} {found.currency}, "
            f"{found.status}) for party {found.party_ref}; we have no such transaction.",
            {
                "bakktRef": found.transaction_ref,
                "partyRef": found.party_ref,
                "kind": str(found.kind),
                "status": str(found.status),
                "amount": str(found.amount),
            },
        ),
    ):
        summary.flagged += 1
        _drift(summary, metrics, Drift.UNKNOWN_REF, found, "not in our records")


async def run_scheduled_reconcile(
    session_factory: SessionFactory,
    bakkt: BakktClient,
    settings: Settings,
    *,
    now: datetime | None = None,
    metrics: Metrics | None = None,
) -> ReconcileSummary | None:
    """The daily reconciliation, run by whichever replica finds it due first; None when it is
    not due (or another replica is running it). The window starts where the last successful
    run started, less an overlap, so a stopped service catches up on the whole gap."""
    metrics = metrics or METRICS
    if circuit_open(bakkt):
        return None
    async with session_factory() as session:
        now = now or await db_now(session)
        job = await repo.lock_job(session, RECONCILE_JOB)
        if job is None or not _due(
            job.running_until, job.last_started_at, job.last_success_started_at, now, settings
        ):
            await session.rollback()
            return None
        if job.last_success_started_at is not None:
            since = job.last_success_started_at - timedelta(
                minutes=settings.reconcile_overlap_minutes
            )
        else:
            since = now - timedelta(hours=settings.reconcile_initial_lookback_hours)
        job.running_until = now + RECONCILE_LEASE
        job.last_started_at = now
        await session.commit()
    try:
        summary = await reconcile(session_factory, bakkt, since=since, metrics=metrics)
    except Exception as exc:
        async with session_factory() as session:
            await repo.finish_job(
                session,
                RECONCILE_JOB,
                started_at=now,
                succeeded=False,
                summary=None,
                error=f"{type(exc).__name__}: {exc}"[:2000],
            )
            await session.commit()
        raise
    async with session_factory() as session:
        await repo.finish_job(
            session,
            RECONCILE_JOB,
            started_at=now,
            succeeded=summary.ok,
            summary=summary.to_json(),
            error=None if summary.ok else f"{summary.parties_failed} parties could not be listed",
        )
        await session.commit()
    return summary


def _due(
    running_until: datetime | None,
    last_started: datetime | None,
    last_success_started: datetime | None,
    now: datetime,
    settings: Settings,
) -> bool:
    if running_until is not None and running_until > now:
        return False
    if last_started is None:
        return True
    if last_success_started == last_started:
        return now >= last_started + timedelta(hours=settings.reconcile_interval_hours)
    retry = min(RECONCILE_RETRY, timedelta(hours=settings.reconcile_interval_hours))
    return now >= last_started + retry
