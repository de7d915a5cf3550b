"""The recovery jobs: settle unknown outcomes, sweep open transactions, reconcile with Bakkt, finish
abandoned consumer requests, apply retention. docs/recovery.md has the rules and the why.

Every job that calls Bakkt has the same shape, so any number of replicas can run it at once:
1. claim a bounded batch in one short transaction (`FOR NO KEY UPDATE SKIP LOCKED`) that pushes
   each row's `next_check_at` past a lease, and commit;
2. call Bakkt with no database transaction open;
3. record the outcome in a new short transaction, under the row lock, through
   `app.funding.state.transition(..., source=sync)` - re-reading the row first, since a webhook or
   the API may have moved it in the meantime.
A worker that dies between 1 and 3 leaves its rows to be claimed again when the lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bakkt import (
    BakktClient,
    BakktError,
    BakktRejected,
    BakktTransaction,
    TransactionKind,
    TransferDirection,
    TransferMethod,
    TransferRequest,
)
from app.bakkt.breaker import CircuitOpen
from app.config import Settings
from app.core.backoff import backoff
from app.core.clock import db_now, utcnow
from app.core.money import format_dollars, to_dollars, whole_cents
from app.errors import is_database_unavailable
from app.funding import repository as funding_repo
from app.funding.models import (
    HistorySource,
    Transaction,
    TransactionMethod,
    TransactionOrigin,
    TransactionType,
)
from app.funding.models import TransactionStatus as Status
from app.funding.schemas import dump
from app.funding.service import transaction_out
from app.funding.state import ALLOWED_MOVES, decide, from_bakkt_status, record_creation, transition
from app.idempotency import repository as idempotency_repo
from app.recovery import repository as repo
from app.recovery.metrics import METRICS, Metrics
from app.webhooks.service import (
    ACCOUNT_UNUSABLE_CODES,
    BAKKT_ORIGINATED,
    KIND_TYPES,
    UNAUTHORIZED_CODES,
    insert_bakkt_started,
)

log = logging.getLogger("app.recovery")

SessionFactory = async_sessionmaker[AsyncSession]
T = TypeVar("T")

# Bakkt keeps a transfer's idempotency key 10 days (shared/bakkt/DECISIONS.md A7).
BAKKT_KEY_LIFETIME = timedelta(days=10)
RECONCILE_JOB = "reconcile"
# A scheduled reconciliation is left to the replica that started it this long.
RECONCILE_LEASE = timedelta(hours=2)
# A failed or interrupted scheduled reconciliation is tried again this soon, not a day later.
RECONCILE_RETRY = timedelta(minutes=15)
# A consumer request recovery finishes holds its key this long while it stores the answer.
FINISH_LEASE = timedelta(seconds=30)

# Reason codes of the FAILED states recovery decides (the API shows them as `reasonCode`).
WIRE_NOT_RETAINED = "wire_destination_not_retained"
KEY_EXPIRED = "bakkt_idempotency_key_expired"


def _predecessors() -> dict[Status, frozenset[Status]]:
    """For each state, the states that lead to it: Bakkt reporting one of those is an older
    read than what we hold (a webhook got there first), not a disagreement."""
    out: dict[Status, set[Status]] = {s: set() for s in Status}
    for start in Status:
        stack = list(ALLOWED_MOVES[start])
        seen: set[Status] = set()
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            out[s].add(start)
            stack.extend(ALLOWED_MOVES[s])
    return {s: frozenset(p) for s, p in out.items()}


BEHIND = _predecessors()


class Drift(StrEnum):
    """Kinds of disagreement reconciliation counts (metric label `kind`)."""

    STATUS = "status"  # Bakkt is further along than we are: a status webhook was lost
    MISSING = "missing"  # a transaction Bakkt started that we never heard of: created now
    UNKNOWN_REF = "unknown_ref"  # one of "ours" at Bakkt that we never stored: flagged
    MISMATCH = "mismatch"  # amount, currency, party or kind differ: held for review
    CONFLICT = "conflict"  # Bakkt's status cannot follow ours (say, ours FAILED): flagged


class Verdict(StrEnum):
    MOVED = "moved"
    SAME = "same"
    STALE = "stale"
    CONFLICT = "conflict"
    MISMATCH = "mismatch"
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class Claimed:
    """What a claim read of a transaction: enough to call Bakkt without the session."""

    id: uuid.UUID
    party_ref: str
    bakkt_ref: str
    idempotency_key: str | None
    type: str
    method: str | None
    status: str
    amount_cents: int
    currency: str
    created_at: datetime
    check_attempts: int

    @classmethod
    def of(cls, txn: Transaction) -> Claimed:
        return cls(
            txn.id,
            txn.party_ref,
            txn.bakkt_ref,
            txn.bakkt_idempotency_key,
            txn.type,
            txn.method,
            txn.status,
            txn.amount_cents,
            txn.currency,
            txn.created_at,
            txn.check_attempts,
        )

    @property
    def is_wire_withdrawal(self) -> bool:
        return self.type == TransactionType.WITHDRAWAL and self.method == TransactionMethod.WIRE


@dataclass(slots=True)
class _Run:
    """One job cycle's collaborators and its clock."""

    factory: SessionFactory
    bakkt: BakktClient
    settings: Settings
    metrics: Metrics
    now: datetime


# --- shared helpers ----------------------------------------------------------------------------


def circuit_open(bakkt: BakktClient) -> bool:
    """True while the client's breaker refuses calls: jobs skip their cycle instead of
    claiming rows they could not work on."""
    return bakkt.breaker is not None and bakkt.breaker.is_open()


async def _db_now(factory: SessionFactory, now: datetime | None) -> datetime:
    if now is not None:
        return now
    async with factory() as session:
        found = await db_now(session)
        await session.rollback()
        return found


async def _bounded(
    items: Sequence[T], limit: int, work: Callable[[T], Awaitable[None]], *, job: str
) -> None:
    """Run `work` for every item, at most `limit` at once. One item failing does not stop the
    others; a database outage is re-raised afterwards so the job loop backs off."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> None:
        async with gate:
            await work(item)

    results = await asyncio.gather(*(one(i) for i in items), return_exceptions=True)
    outage: BaseException | None = None
    for item, result in zip(items, results, strict=True):
        if not isinstance(result, BaseException):
            continue
        if isinstance(result, asyncio.CancelledError):
            raise result
        if is_database_unavailable(result):
            outage = outage or result
            continue
        log.error("%s: %r failed; it is retried after its lease", job, item, exc_info=result)
    if outage is not None:
        raise outage


def _clip(value: str | None, length: int) -> str | None:
    return value[:length] if value else value


def _mismatch(txn: Transaction, found: BakktTransaction) -> str | None:
    problems = []
    if txn.party_ref != found.party_ref:
        problems.append(f"party {found.party_ref!r} is not the transaction's")
    if whole_cents(found.amount) != txn.amount_cents:
        problems.append(
            f"amount {found.amount} differs from ours {format_dollars(txn.amount_cents)}"
        )
    if found.currency.upper() != txn.currency:
        problems.append(f"currency {found.currency} differs from ours {txn.currency}")
    if isinstance(found.kind, TransactionKind):
        type_, method = KIND_TYPES[found.kind]
        if txn.type != type_ or (method and txn.method and txn.method != method):
            problems.append(f"kind {found.kind} does not fit a {txn.method or ''} {txn.type}")
    return "; ".join(problems) or None


def _apply_bakkt(
    session: AsyncSession, txn: Transaction, found: BakktTransaction, *, note: str
) -> Verdict:
    """Move `txn` to what Bakkt reports, if the state machine allows it (caller holds the row
    lock). Bakkt's `updatedAt` orders the move against webhooks: a read older than the event
    that set our state is stale and changes nothing."""
    if _mismatch(txn, found):
        return Verdict.MISMATCH
    target = from_bakkt_status(found.status)
    if target is None:
        log.warning("bakkt reports unknown status %r for %s", found.status, found.transaction_ref)
        return Verdict.UNREADABLE
    current = Status(txn.status)
    if target == current:
        return Verdict.SAME
    decision = decide(
        current, target, current_event_time=txn.status_event_time, event_time=found.updated_at
    )
    stale = txn.status_event_time is not None and found.updated_at < txn.status_event_time
    if not decision.apply and (stale or target in BEHIND[current]):
        return Verdict.STALE
    moved = transition(
        session,
        txn,
        target,
        source=HistorySource.SYNC,
        event_time=found.updated_at,
        reason_code=_clip(found.reason_code, 64),
        reason_description=found.reason_description,
        note=note,
    )
    # Not moved here means the table forbids it: recorded as ignored by transition().
    return Verdict.MOVED if moved else Verdict.CONFLICT


def _schedule_after_move(txn: Transaction, run: _Run) -> None:
    if txn.status == Status.PENDING:
        txn.check_attempts = 0
        txn.next_check_at = run.now + timedelta(seconds=run.settings.recovery_sweep_first_check)
    elif txn.status not in repo.UNSETTLED:
        txn.next_check_at = None


async def _alert_once(
    session: AsyncSession, *, kind: str, subject: str, detail: str, data: dict[str, Any]
) -> bool:
    """An operator alert, unless an unresolved one of this kind about this subject exists.
    Callers hold the row lock of what the alert is about, so two workers cannot both add it."""
    if await repo.open_alert_exists(session, kind=kind, subject=subject):
        return False
    repo.add_alert(session, kind=kind, subject=subject, detail=detail, data=data)
    return True


async def _hold(session: AsyncSession, txn: Transaction, found: BakktTransaction, why: str) -> None:
    """Bakkt and we disagree about what this transaction is: neither side silently wins."""
    mismatch = _mismatch(txn, found) or "differs"
    if txn.held_for_review:
        return
    txn.held_for_review = True
    txn.review_reason = f"{why}: {mismatch}"
    txn.updated_at = utcnow()
    await _alert_once(
        session,
        kind="transaction_held_for_review",
        subject=f"transaction {txn.id}",
        detail=f"{why}: {mismatch}",
        data={
            "transactionId": str(txn.id),
            "bakktRef": txn.bakkt_ref,
            "ours": {"amount": format_dollars(txn.amount_cents), "currency": txn.currency},
            "bakkt": {"amount": str(found.amount), "currency": found.currency},
        },
    )


async def _conflict(session: AsyncSession, txn: Transaction, found: BakktTransaction) -> None:
    await _alert_once(
        session,
        kind="transaction_status_conflict",
        subject=f"transaction {txn.id}",
        detail=(
            f"We hold {txn.status} but Bakkt reports {found.status} for {txn.bakkt_ref}; "
            "the state machine does not allow the move, so an operator must decide."
        ),
        data={"transactionId": str(txn.id), "bakktRef": txn.bakkt_ref, "bakkt": found.status},
    )


async def _return_policy(session: AsyncSession, txn: Transaction, now: datetime) -> None:
    """An ACH return code is a fact about the bank account (the webhook receiver's rule, applied
    when reconciliation is the one that learns of the return)."""
    code = (txn.reason_code or "").strip().upper()
    if txn.status != Status.RETURNED or txn.bank_account_id is None or not code:
        return
    if code in ACCOUNT_UNUSABLE_CODES:
        await funding_repo.disable_bank_account(
            session, txn.bank_account_id, reason_code=code, now=now
        )
    elif code in UNAUTHORIZED_CODES:
        await funding_repo.flag_bank_account_for_review(session, txn.bank_account_id, now=now)


# --- settle unknown outcomes --------------------------------------------------------------------


async def settle_unknown(
    session_factory: SessionFactory,
    bakkt: BakktClient,
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int | None = None,
    metrics: Metrics | None = None,
) -> int:
    """One cycle: settle transactions whose outcome at Bakkt is unknown (UNKNOWN, and SUBMITTING
    past the grace period). Looks each up by its ref and adopts Bakkt's answer; if Bakkt never
    saw it, re-sends it with the same idempotency key while Bakkt still keeps that key, else
    fails it with a reason. Returns how many transactions it claimed (a full batch means there
    may be more). Skips the cycle while the Bakkt circuit is open."""
    metrics = metrics or METRICS
    if circuit_open(bakkt):
        metrics.inc("recovery_skipped_circuit_open_total", job="settle")
        return 0
    now = await _db_now(session_factory, now)
    grace = timedelta(seconds=settings.recovery_submitting_grace)
    async with session_factory() as session:
        rows = await repo.claim_unsettled(
            session,
            now=now,
            submitting_before=now - grace,
            lease_until=now + timedelta(seconds=settings.recovery_claim_lease),
            limit=limit or settings.recovery_batch_size,
        )
        claimed = [Claimed.of(r) for r in rows]
        await session.commit()
    run = _Run(session_factory, bakkt, settings, metrics, now)
    await _bounded(
        claimed, settings.recovery_concurrency, lambda c: _settle_one(run, c), job="settle"
    )
    return len(claimed)


async def _settle_one(run: _Run, c: Claimed) -> None:
    try:
        found = await run.bakkt.get_transaction(c.party_ref, c.bakkt_ref)
    except BakktError as exc:
        await _still_unknown(run, c, f"look-up failed: {exc}", exc)
        return
    if found is not None:
        await _adopt(run, c, found)
        return
    # Bakkt never accepted a transfer with this ref.
    age = run.now - c.created_at
    grace = timedelta(seconds=run.settings.recovery_submitting_grace)
    if c.is_wire_withdrawal:
        if age < grace:
            # The consumer's retry (same Idempotency-Key) carries the destination and can still
            # send it; recovery cannot, so it waits out the grace period first.
            await _still_unknown(run, c, "not at Bakkt; waiting for the consumer's retry", None)
            return
        await _fail(
            run,
            c,
            WIRE_NOT_RETAINED,
            "Bakkt never received this wire withdrawal and its destination account is not kept, "
            "so it cannot be sent again. Request the withdrawal again.",
            metric="recovery_failed_wire_not_retained_total",
        )
        return
    margin = timedelta(hours=run.settings.recovery_resend_margin_hours)
    if age >= BAKKT_KEY_LIFETIME - margin or c.idempotency_key is None:
        await _fail(
            run,
            c,
            KEY_EXPIRED,
            "Bakkt never received this transfer and its idempotency key has expired there, so "
            "it cannot be sent again safely. Request it again.",
            metric="recovery_failed_expired_total",
        )
        return
    await _resend(run, c, c.idempotency_key)


def _transfer_request(c: Claimed, idempotency_key: str) -> TransferRequest:
    return TransferRequest(
        party_ref=c.party_ref,
        transaction_ref=c.bakkt_ref,
        idempotency_key=idempotency_key,
        direction=TransferDirection.DEPOSIT
        if c.type == TransactionType.DEPOSIT
        else TransferDirection.WITHDRAW,
        method=TransferMethod(c.method or TransactionMethod.ACH),
        amount=to_dollars(c.amount_cents),
        currency=c.currency,
    )


async def _resend(run: _Run, c: Claimed, idempotency_key: str) -> None:
    """The same intent, the same key and ref: Bakkt executes it at most once whatever happened
    to the earlier sends."""
    try:
        await run.bakkt.transfer(_transfer_request(c, idempotency_key))
    except BakktRejected as exc:
        if exc.http_status >= 500:
            # Our own set-up is refused (partner id, credentials): the intent is fine, retry
            # once an operator has fixed it.
            log.error("re-send of %s refused for our set-up: %s", c.bakkt_ref, exc)
            await _still_unknown(run, c, f"re-send refused: {exc.bakkt_type}", exc, resent=True)
            return
        run.metrics.inc("recovery_resend_rejected_total")
        await _fail(
            run,
            c,
            exc.code,
            exc.consumer_message,
            note=f"re-sent with the same key; rejected by Bakkt: {exc.status} {exc.bakkt_type}",
            resent=True,
        )
        return
    except BakktError as exc:
        await _still_unknown(run, c, f"re-send: {exc}", exc, resent=True)
        return
    async with run.factory() as session:
        txn = await repo.lock_transaction(session, c.id)
        if txn is None:  # pragma: no cover - transactions are never deleted
            return
        txn.submit_attempts += 1
        moved = transition(
            session,
            txn,
            Status.PENDING,
            source=HistorySource.SYNC,
            note="re-sent with the same idempotency key; accepted by Bakkt",
        )
        if moved:
            _schedule_after_move(txn, run)
        await session.commit()
    run.metrics.inc("recovery_resent_total")
    log.info("transfer %s re-sent with its key and accepted by Bakkt", c.bakkt_ref)


async def _adopt(run: _Run, c: Claimed, found: BakktTransaction) -> None:
    async with run.factory() as session:
        txn = await repo.lock_transaction(session, c.id)
        if txn is None:  # pragma: no cover
            return
        verdict = _apply_bakkt(session, txn, found, note="outcome settled: found at Bakkt")
        if verdict is Verdict.MOVED:
            _schedule_after_move(txn, run)
        elif verdict is Verdict.MISMATCH:
            await _hold(session, txn, found, "settling an unknown outcome")
            txn.next_check_at = None
        elif verdict is Verdict.CONFLICT:
            await _conflict(session, txn, found)
        elif txn.status in repo.UNSETTLED:
            # Bakkt has it but we could not apply its status: look again later.
            _back_off(txn, run, unknown=True)
        await session.commit()
    if verdict is Verdict.MOVED:
        run.metrics.inc("recovery_settled_unknown_total")
        log.info("transfer %s settled from Bakkt's record: %s", c.bakkt_ref, found.status)


async def _fail(
    run: _Run,
    c: Claimed,
    code: str,
    description: str,
    *,
    metric: str | None = None,
    note: str | None = None,
    resent: bool = False,
) -> None:
    async with run.factory() as session:
        txn = await repo.lock_transaction(session, c.id)
        if txn is None or txn.status not in repo.UNSETTLED:
            # Settled by a webhook or the API meanwhile: that answer stands.
            await session.rollback()
            return
        if resent:
            txn.submit_attempts += 1
        transition(
            session,
            txn,
            Status.FAILED,
            source=HistorySource.SYNC,
            reason_code=code,
            reason_description=description,
            note=note or f"recovery: {code}",
        )
        txn.next_check_at = None
        await session.commit()
    if metric:
        run.metrics.inc(metric)
    log.warning("transfer %s failed by recovery: %s", c.bakkt_ref, code)


def _back_off(txn: Transaction, run: _Run, *, unknown: bool) -> None:
    s = run.settings
    txn.check_attempts += 1
    if unknown:
        base, cap = s.recovery_unknown_backoff_base, s.recovery_unknown_backoff_cap
        delay = backoff(txn.check_attempts, base=base, cap=cap)
    else:
        # The first look came `first_check` after the move; each later one waits twice as long.
        base, cap = s.recovery_sweep_first_check, s.recovery_sweep_backoff_cap
        delay = backoff(txn.check_attempts + 1, base=base, cap=cap)
    txn.next_check_at = run.now + timedelta(seconds=delay)


async def _still_unknown(
    run: _Run, c: Claimed, note: str, exc: BaseException | None, *, resent: bool = False
) -> None:
    async with run.factory() as session:
        txn = await repo.lock_transaction(session, c.id)
        if txn is None or txn.status not in repo.UNSETTLED:
            await session.rollback()
            return
        if resent:
            txn.submit_attempts += 1
        if txn.status == Status.SUBMITTING:
            # Its request died mid-call: what is known now is that the outcome is unknown.
            transition(session, txn, Status.UNKNOWN, source=HistorySource.SYNC, note=note)
        if isinstance(exc, CircuitOpen):
            # Not this transaction's fault: look again when the breaker lets calls through.
            txn.next_check_at = run.now + timedelta(seconds=max(exc.retry_after, 1.0))
        else:
            _back_off(txn, run, unknown=True)
        await session.commit()
    run.metrics.inc("recovery_still_unknown_total")
    log.info("transfer %s still unknown (%s)", c.bakkt_ref, note)


# --- sweep open transactions --------------------------------------------------------------------


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
        metrics.inc("recovery_skipped_circuit_open_total", job="sweep")
        return 0
    now = await _db_now(session_factory, now)
    async with session_factory() as session:
        rows = await repo.claim_pending(
            session,
            now=now,
            lease_until=now + timedelta(seconds=settings.recovery_claim_lease),
            limit=limit or settings.recovery_batch_size,
        )
        claimed = [Claimed.of(r) for r in rows]
        await session.commit()
    run = _Run(session_factory, bakkt, settings, metrics, now)
    await _bounded(
        claimed, settings.recovery_concurrency, lambda c: _sweep_one(run, c), job="sweep"
    )
    return len(claimed)


async def _sweep_one(run: _Run, c: Claimed) -> None:
    error: BakktError | None = None
    found: BakktTransaction | None = None
    try:
        found = await run.bakkt.get_transaction(c.party_ref, c.bakkt_ref)
    except BakktError as exc:
        error = exc
    run.metrics.inc("recovery_swept_total")
    async with run.factory() as session:
        txn = await repo.lock_transaction(session, c.id)
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
            await _alert_once(
                session,
                kind="transaction_missing_at_bakkt",
                subject=f"transaction {txn.id}",
                detail=f"{txn.bakkt_ref} is PENDING here but Bakkt has no such transaction.",
                data={"transactionId": str(txn.id), "bakktRef": txn.bakkt_ref},
            )
            log.warning("sweep: %s is PENDING here but unknown at Bakkt", txn.bakkt_ref)
        else:
            verdict = _apply_bakkt(session, txn, found, note="sweep: polled at Bakkt")
            if verdict is Verdict.MISMATCH:
                await _hold(session, txn, found, "sweep")
            elif verdict is Verdict.CONFLICT:
                await _conflict(session, txn, found)
        if verdict is Verdict.MOVED:
            _schedule_after_move(txn, run)
            run.metrics.inc("recovery_sweep_moved_total")
            log.info("sweep: %s is now %s (its webhook is late or lost)", c.bakkt_ref, txn.status)
        elif txn.status == Status.PENDING:
            if not isinstance(error, CircuitOpen):
                _back_off(txn, run, unknown=False)
            if txn.held_for_review:
                txn.next_check_at = None
            await _check_overdue(session, txn, run)
        await session.commit()


async def _check_overdue(session: AsyncSession, txn: Transaction, run: _Run) -> None:
    deadline = settlement_deadline(txn.type, txn.method, txn.created_at, run.settings)
    if run.now < deadline:
        return
    raised = await _alert_once(
        session,
        kind="transaction_overdue",
        subject=f"transaction {txn.id}",
        detail=(
            f"{txn.method or ''} {txn.type} {txn.bakkt_ref} has been PENDING since "
            f"{txn.created_at.isoformat()}, past its expected settlement by "
            f"{deadline.isoformat()}."
        ),
        data={
            "transactionId": str(txn.id),
            "bakktRef": txn.bakkt_ref,
            "partyRef": txn.party_ref,
            "createdAt": txn.created_at.isoformat(),
            "expectedBy": deadline.isoformat(),
        },
    )
    if raised:
        run.metrics.inc("recovery_overdue_alerts_total")
        log.warning("transaction %s is overdue (expected by %s)", txn.bakkt_ref, deadline)


# --- consumer requests left unfinished ----------------------------------------------------------


async def finish_abandoned_requests(
    session_factory: SessionFactory, *, limit: int = 100, metrics: Metrics | None = None
) -> int:
    """Store the answer of consumer requests that died after writing their transaction, once the
    transaction is settled: what the funding API's own resume would answer (202 with the
    transaction as it is now). A later retry with the same Idempotency-Key replays it. Keys whose
    lease is still live (a retry holds them) are left alone. Returns how many it finished."""
    metrics = metrics or METRICS
    finished = 0
    async with session_factory() as session:
        found = await repo.abandoned_requests(session, limit=limit)
        await session.rollback()
        for key_id, transaction_id in found:
            # Taking the key over is atomic with the lease check: a retry that renewed it first
            # wins and we skip it.
            if await idempotency_repo.take_over(session, key_id, FINISH_LEASE) is None:
                await session.rollback()
                continue
            txn = await repo.get_transaction(session, transaction_id)
            if txn is None or txn.status in repo.UNSETTLED:
                await session.rollback()
                continue
            body = dump(transaction_out(txn))
            if await idempotency_repo.finish(session, key_id, 202, body):
                finished += 1
            await session.commit()
    metrics.inc("recovery_requests_finished_total", finished)
    return finished


# --- reconciliation -----------------------------------------------------------------------------


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
            party_list = await repo.reconcile_parties(session)
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
    # Fees and adjustments whose transfer we did not know when they were created.
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
            now = await db_now(session)
            for ref, related_ref in unlinked:
                related_id = await funding_repo.transaction_id_by_ref(session, related_ref)
                if related_id is not None:
                    await repo.link_relation(session, bakkt_ref=ref, related_id=related_id, now=now)
            await session.commit()


async def _reconcile_one(
    session: AsyncSession,
    found: BakktTransaction,
    summary: ReconcileSummary,
    metrics: Metrics,
    unlinked: list[tuple[str, str]],
    now: datetime,
) -> None:
    txn = await funding_repo.lock_transaction_by_ref(session, found.transaction_ref)
    if txn is None:
        txn = await _create_missing(session, found, summary, metrics, unlinked, now)
        if txn is None:
            return
    verdict = _apply_bakkt(session, txn, found, note="reconciliation: Bakkt's record differs")
    if verdict is Verdict.MOVED:
        summary.moved += 1
        _drift(summary, metrics, Drift.STATUS, found, f"{found.status}, we had it otherwise")
        if txn.status == Status.PENDING:
            txn.check_attempts = 0
            txn.next_check_at = now
        elif txn.status not in repo.UNSETTLED:
            txn.next_check_at = None
        await _return_policy(session, txn, now)
    elif verdict is Verdict.MISMATCH:
        if not txn.held_for_review:
            _drift(summary, metrics, Drift.MISMATCH, found, _mismatch(txn, found) or "")
            summary.flagged += 1
        await _hold(session, txn, found, "reconciliation")
    elif verdict is Verdict.CONFLICT:
        _drift(summary, metrics, Drift.CONFLICT, found, f"ours is {txn.status}")
        summary.flagged += 1
        await _conflict(session, txn, found)
    if (
        txn.origin == TransactionOrigin.BAKKT
        and txn.related_transaction_id is None
        and found.related_transaction_ref
    ):
        related_id = await funding_repo.transaction_id_by_ref(
            session, found.related_transaction_ref
        )
        if related_id is not None and related_id != txn.id:
            txn.related_transaction_id = related_id
        else:
            unlinked.append((txn.bakkt_ref, found.related_transaction_ref))


async def _create_missing(
    session: AsyncSession,
    found: BakktTransaction,
    summary: ReconcileSummary,
    metrics: Metrics,
    unlinked: list[tuple[str, str]],
    now: datetime,
) -> Transaction | None:
    """Create a Bakkt-started transaction we never heard of; flag one of "ours" we never stored.
    Returns the row when it already existed after all (its webhook won the race), to compare."""
    kind = found.kind
    # Kinds only Bakkt starts: one we have never seen is created. Any other kind is one of ours
    # (a partnerTransactionRef we never stored) and goes to an operator.
    if not isinstance(kind, TransactionKind) or kind not in BAKKT_ORIGINATED:
        subject = f"bakkt transaction {found.transaction_ref}"
        if await _alert_once(
            session,
            kind="reconcile_unknown_transaction",
            subject=subject,
            detail=(
                f"Bakkt lists {kind} {found.transaction_ref} ({found.amount} {found.currency}, "
                f"{found.status}) for party {found.party_ref}; we have no such transaction."
            ),
            data={
                "bakktRef": found.transaction_ref,
                "partyRef": found.party_ref,
                "kind": str(kind),
                "status": str(found.status),
                "amount": str(found.amount),
            },
        ):
            summary.flagged += 1
            _drift(summary, metrics, Drift.UNKNOWN_REF, found, "not in our records")
        return None
    status = from_bakkt_status(found.status)
    cents = whole_cents(found.amount)
    if status is None or cents is None or len(found.currency) != 3:
        log.warning("reconcile: cannot record %s (%s)", found.transaction_ref, found)
        return None
    new_id = await insert_bakkt_started(
        session,
        found,
        party_ref=found.party_ref,
        status=status,
        amount_cents=cents,
        status_event_time=found.updated_at,
        now=now,
    )
    txn = await funding_repo.lock_transaction_by_ref(session, found.transaction_ref)
    if new_id is None or txn is None:
        return txn
    record_creation(
        session,
        txn,
        source=HistorySource.SYNC,
        event_time=found.updated_at,
        note=f"found by reconciliation ({kind}); its webhook was lost",
    )
    if found.related_transaction_ref and txn.related_transaction_id is None:
        unlinked.append((found.transaction_ref, found.related_transaction_ref))
    summary.created += 1
    _drift(summary, metrics, Drift.MISSING, found, f"created as {KIND_TYPES[kind][0]} {status}")
    return None


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


# --- retention ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetentionSummary:
    idempotency_keys_deleted: int
    webhook_bodies_cleared: int


async def apply_retention(
    session_factory: SessionFactory,
    settings: Settings,
    *,
    now: datetime | None = None,
    batch: int = 1000,
    metrics: Metrics | None = None,
) -> RetentionSummary:
    """Delete consumer idempotency keys past `expires_at` (10 days, as at Bakkt) and clear the raw
    body of webhook events older than WEBHOOK_BODY_RETENTION_DAYS (the event row, its refs and
    outcome stay). Transactions and their history are never deleted. Batched, each batch its own
    short transaction, so it never holds many locks for long."""
    metrics = metrics or METRICS
    now = await _db_now(session_factory, now)
    cutoff = now - timedelta(days=settings.webhook_body_retention_days)
    keys = await _in_batches(
        session_factory,
        lambda s: repo.delete_expired_idempotency_keys(s, now=now, limit=batch),
        batch,
    )
    bodies = await _in_batches(
        session_factory, lambda s: repo.clear_webhook_bodies(s, before=cutoff, limit=batch), batch
    )
    metrics.inc("recovery_retention_deleted_total", keys, what="idempotency_keys")
    metrics.inc("recovery_retention_deleted_total", bodies, what="webhook_bodies")
    if keys or bodies:
        log.info("retention: %d idempotency keys deleted, %d webhook bodies cleared", keys, bodies)
    return RetentionSummary(keys, bodies)


async def _in_batches(
    factory: SessionFactory, step: Callable[[AsyncSession], Awaitable[int]], batch: int
) -> int:
    total = 0
    while True:
        async with factory() as session:
            done = await step(session)
            await session.commit()
        total += done
        if done < batch:
            return total
