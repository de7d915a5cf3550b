"""Settling unknown outcomes: transfers whose answer from Bakkt we never heard (UNKNOWN, and
SUBMITTING past the grace period). docs/recovery.md has the rules and the why."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from app.bakkt import BakktClient, BakktError, BakktRejected, BakktTransaction
from app.bakkt.breaker import CircuitOpen
from app.config import Settings
from app.core.metrics import METRICS, Metrics
from app.funding import bakkt_sync
from app.funding import repository as funding_repo
from app.funding.bakkt_sync import BakktReport, Verdict
from app.funding.models import HistorySource
from app.funding.models import TransactionStatus as Status
from app.funding.repository import UNSETTLED
from app.funding.state import transition
from app.funding.transfer import transfer_request
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

# Bakkt keeps a transfer's idempotency key 10 days (docs/bakkt-contract.md A7).
BAKKT_KEY_LIFETIME = timedelta(days=10)

# Reason codes of the FAILED states recovery decides (the API shows them as `reasonCode`).
WIRE_NOT_RETAINED = "wire_destination_not_retained"
KEY_EXPIRED = "bakkt_idempotency_key_expired"


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
        metrics.inc("recovery_skipped_circuit_open_total", worker="settle")
        return 0
    now = await cycle_start(session_factory, now)
    grace = timedelta(seconds=settings.recovery_submitting_grace)
    async with session_factory() as session:
        rows = await funding_repo.claim_unsettled(
            session,
            now=now,
            submitting_before=now - grace,
            lease_until=now + timedelta(seconds=settings.recovery_claim_lease),
            limit=limit or settings.recovery_batch_size,
        )
        claimed = [ClaimedTransaction.of(r) for r in rows]
        await session.commit()
    run = JobRun(session_factory, bakkt, settings, metrics, now)
    await bounded(
        claimed, settings.recovery_concurrency, lambda c: _settle_one(run, c), job="settle"
    )
    return len(claimed)


async def _settle_one(run: JobRun, c: ClaimedTransaction) -> None:
    try:
        found = await run.bakkt.get_transaction(c.party_ref, c.bakkt_ref)
    except BakktError as exc:
        await _still_unknown(run, c, f"look-up failed: {exc}", exc)
        return
    if found is not None:
        await adopt(run, c, found)
        return
    await not_at_bakkt(run, c)


async def not_at_bakkt(run: JobRun, c: ClaimedTransaction) -> None:
    """Bakkt never accepted a transfer with this ref: send it again with its key while that is
    safe, else fail it with the reason (a wire inside the grace period waits for its retry)."""
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


async def _resend(run: JobRun, c: ClaimedTransaction, idempotency_key: str) -> None:
    """The same intent, the same key and ref: Bakkt executes it at most once whatever happened
    to the earlier sends."""
    request = transfer_request(
        party_ref=c.party_ref,
        bakkt_ref=c.bakkt_ref,
        idempotency_key=idempotency_key,
        type_=c.type,
        method=c.method,
        amount_cents=c.amount_cents,
        currency=c.currency,
    )
    try:
        await run.bakkt.transfer(request)
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
        txn = await funding_repo.lock_transaction(session, c.id)
        if txn is None:  # pragma: no cover - transactions are never deleted
            return
        txn.submit_attempts += 1
        moved = transition(
            session,
            txn,
            Status.PENDING,
            source=run.history_source,
            note="re-sent with the same idempotency key; accepted by Bakkt",
            actor=run.actor,
        )
        if moved:
            schedule_after_move(txn, run)
        await session.commit()
    run.metrics.inc("recovery_resent_total")
    log.info("transfer %s re-sent with its key and accepted by Bakkt", c.bakkt_ref)


async def adopt(run: JobRun, c: ClaimedTransaction, found: BakktTransaction) -> Verdict | None:
    """Apply Bakkt's record of a transaction (`bakkt_sync.apply`) and schedule its next look;
    the verdict (None when the row is gone)."""
    report = BakktReport(
        found,
        HistorySource.SYNC,
        at=found.updated_at,
        context="settling an unknown outcome" if run.actor is None else f"sync by {run.actor}",
        note="outcome settled: found at Bakkt" if run.actor is None else "forced sync",
        actor=run.actor,
    )
    async with run.factory() as session:
        txn = await funding_repo.lock_transaction(session, c.id)
        if txn is None:  # pragma: no cover
            return None
        applied = await bakkt_sync.apply(session, txn, report, now=run.now)
        await raise_alert(session, applied)
        if applied.verdict is Verdict.MOVED:
            schedule_after_move(txn, run)
        elif applied.verdict is Verdict.HELD:
            txn.next_check_at = None
        elif applied.verdict is not Verdict.CONFLICT and txn.status in UNSETTLED:
            # Bakkt has it but we could not apply its status: look again later.
            back_off(txn, run, unknown=True)
        await session.commit()
    if applied.verdict is Verdict.MOVED and run.actor is None:
        run.metrics.inc("recovery_settled_unknown_total")
        log.info("transfer %s settled from Bakkt's record: %s", c.bakkt_ref, found.status)
    return applied.verdict


async def _fail(
    run: JobRun,
    c: ClaimedTransaction,
    code: str,
    description: str,
    *,
    metric: str | None = None,
    note: str | None = None,
    resent: bool = False,
) -> None:
    async with run.factory() as session:
        txn = await funding_repo.lock_transaction(session, c.id)
        if txn is None or txn.status not in UNSETTLED:
            # Settled by a webhook or the API meanwhile: that answer stands.
            await session.rollback()
            return
        if resent:
            txn.submit_attempts += 1
        transition(
            session,
            txn,
            Status.FAILED,
            source=run.history_source,
            reason_code=code,
            reason_description=description,
            note=note or f"recovery: {code}",
            actor=run.actor,
        )
        txn.next_check_at = None
        await session.commit()
    if metric:
        run.metrics.inc(metric)
    log.warning("transfer %s failed by recovery: %s", c.bakkt_ref, code)


async def _still_unknown(
    run: JobRun,
    c: ClaimedTransaction,
    note: str,
    exc: BaseException | None,
    *,
    resent: bool = False,
) -> None:
    async with run.factory() as session:
        txn = await funding_repo.lock_transaction(session, c.id)
        if txn is None or txn.status not in UNSETTLED:
            await session.rollback()
            return
        if resent:
            txn.submit_attempts += 1
        if txn.status == Status.SUBMITTING:
            # Its request died mid-call: what is known now is that the outcome is unknown.
            transition(
                session,
                txn,
                Status.UNKNOWN,
                source=run.history_source,
                note=note,
                actor=run.actor,
            )
        if isinstance(exc, CircuitOpen):
            # Not this transaction's fault: look again when the breaker lets calls through.
            txn.next_check_at = run.now + timedelta(seconds=max(exc.retry_after, 1.0))
        else:
            back_off(txn, run, unknown=True)
        await session.commit()
    run.metrics.inc("recovery_still_unknown_total")
    log.info("transfer %s still unknown (%s)", c.bakkt_ref, note)
