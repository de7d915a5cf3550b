"""Every SQL statement of the recovery jobs, but those the webhook receiver makes too (in
`app.funding.repository`).

Claims are `FOR NO KEY UPDATE SKIP LOCKED`: a row another worker (or the API, or the webhook
receiver) holds is skipped, not waited for, and the lock does not block the `KEY SHARE` lock a
foreign-key check takes (a fee inserted against a transfer being swept). Moves are made under
`FOR NO KEY UPDATE` without SKIP LOCKED, the lock the webhook receiver takes too.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, select, union, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.models import OperatorAlert
from app.funding.models import (
    Party,
    PartyStatus,
    Transaction,
    TransactionOrigin,
    TransactionStatus,
)
from app.idempotency.models import IdempotencyKey
from app.idempotency.repository import INTENT_WRITTEN
from app.recovery.models import RecoveryJob
from app.webhooks.models import EventStatus, WebhookEvent

OPEN = (TransactionStatus.SUBMITTING, TransactionStatus.UNKNOWN, TransactionStatus.PENDING)
UNSETTLED = (TransactionStatus.SUBMITTING, TransactionStatus.UNKNOWN)


# --- claims -------------------------------------------------------------------------------------


async def _claim(
    session: AsyncSession, due: Any, *, now: datetime, lease_until: datetime, limit: int
) -> Sequence[Transaction]:
    """Lock up to `limit` due rows nobody else holds and push their next check past the lease,
    in the caller's (short) transaction: once it commits, other workers skip them until then."""
    ids = (
        select(Transaction.id)
        .where(
            due,
            Transaction.held_for_review.is_(False),
            Transaction.next_check_at.is_(None) | (Transaction.next_check_at <= now),
        )
        .order_by(Transaction.next_check_at.asc().nulls_first(), Transaction.id)
        .limit(limit)
        .with_for_update(skip_locked=True, key_share=True)
        .scalar_subquery()
    )
    statement = (
        update(Transaction)
        .where(Transaction.id.in_(ids))
        .values(next_check_at=lease_until)
        .returning(Transaction)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return (await session.scalars(statement)).all()


async def claim_unsettled(
    session: AsyncSession,
    *,
    now: datetime,
    submitting_before: datetime,
    lease_until: datetime,
    limit: int,
) -> Sequence[Transaction]:
    """UNKNOWN transactions that are due, and SUBMITTING ones older than the grace period (their
    request died between writing the intent and hearing Bakkt)."""
    due = (Transaction.status == TransactionStatus.UNKNOWN) | (
        (Transaction.status == TransactionStatus.SUBMITTING)
        & (Transaction.created_at <= submitting_before)
    )
    return await _claim(session, due, now=now, lease_until=lease_until, limit=limit)


async def claim_pending(
    session: AsyncSession, *, now: datetime, lease_until: datetime, limit: int
) -> Sequence[Transaction]:
    due = Transaction.status == TransactionStatus.PENDING
    return await _claim(session, due, now=now, lease_until=lease_until, limit=limit)


# --- transactions -------------------------------------------------------------------------------


async def lock_transaction(session: AsyncSession, transaction_id: uuid.UUID) -> Transaction | None:
    statement = (
        select(Transaction)
        .where(Transaction.id == transaction_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(statement)).one_or_none()


async def get_transaction(session: AsyncSession, transaction_id: uuid.UUID) -> Transaction | None:
    statement = (
        select(Transaction)
        .where(Transaction.id == transaction_id)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(statement)).one_or_none()


async def link_relation(
    session: AsyncSession, *, bakkt_ref: str, related_id: uuid.UUID, now: datetime
) -> bool:
    """Point a Bakkt-started row (a fee, an adjustment) at the transfer it concerns, once."""
    statement = (
        update(Transaction)
        .where(
            Transaction.bakkt_ref == bakkt_ref,
            Transaction.origin == TransactionOrigin.BAKKT,
            Transaction.related_transaction_id.is_(None),
            Transaction.id != related_id,
        )
        .values(related_transaction_id=related_id, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(statement)
    return bool(getattr(result, "rowcount", 0))


async def reconcile_parties(session: AsyncSession) -> list[str]:
    """Parties to list at Bakkt: every party not CLOSED, and any party with an open transaction
    (whatever its status), in a stable order."""
    not_closed = select(Party.party_ref.label("party_ref")).where(
        Party.status != PartyStatus.CLOSED
    )
    with_open = select(Transaction.party_ref.label("party_ref")).where(Transaction.status.in_(OPEN))
    both = union(not_closed, with_open).subquery()
    statement = select(both.c.party_ref).order_by(both.c.party_ref)
    return list((await session.scalars(statement)).all())


# --- alerts -------------------------------------------------------------------------------------


async def open_alert_exists(session: AsyncSession, *, kind: str, subject: str) -> bool:
    statement = select(
        exists().where(
            OperatorAlert.kind == kind,
            OperatorAlert.subject == subject[:255],
            OperatorAlert.resolved_at.is_(None),
        )
    )
    return bool((await session.execute(statement)).scalar_one())


def add_alert(
    session: AsyncSession, *, kind: str, subject: str, detail: str, data: dict[str, Any]
) -> None:
    session.add(OperatorAlert(kind=kind, subject=subject[:255], detail=detail, data=data))


# --- consumer requests left unfinished ----------------------------------------------------------


async def abandoned_requests(session: AsyncSession, *, limit: int) -> list[tuple[int, uuid.UUID]]:
    """Idempotency keys whose request wrote its transaction and then died (lease run out), where
    the transaction has since been settled: (key id, transaction id)."""
    statement = (
        select(IdempotencyKey.id, Transaction.id)
        .join(Transaction, Transaction.id == IdempotencyKey.transaction_id)
        .where(
            IdempotencyKey.recovery_point == INTENT_WRITTEN,
            IdempotencyKey.locked_until <= func.clock_timestamp(),
            Transaction.status.not_in(UNSETTLED),
        )
        .order_by(IdempotencyKey.id)
        .limit(limit)
    )
    return [(int(k), t) for k, t in (await session.execute(statement)).all()]


# --- retention ----------------------------------------------------------------------------------


async def delete_expired_idempotency_keys(
    session: AsyncSession, *, now: datetime, limit: int
) -> int:
    ids = (
        select(IdempotencyKey.id)
        .where(IdempotencyKey.expires_at <= now)
        .order_by(IdempotencyKey.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        delete(IdempotencyKey)
        .where(IdempotencyKey.id.in_(ids))
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


async def clear_webhook_bodies(session: AsyncSession, *, before: datetime, limit: int) -> int:
    """Null the raw body of events received before `before`. Events still waiting to be applied
    keep theirs: it is all they have."""
    ids = (
        select(WebhookEvent.id)
        .where(
            WebhookEvent.body.is_not(None),
            WebhookEvent.received_at < before,
            WebhookEvent.status.not_in((EventStatus.RECEIVED, EventStatus.PARKED)),
        )
        .order_by(WebhookEvent.received_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        update(WebhookEvent)
        .where(WebhookEvent.id.in_(ids))
        .values(body=None)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


# --- scheduled jobs -----------------------------------------------------------------------------


async def lock_job(session: AsyncSession, name: str) -> RecoveryJob | None:
    """The job's row, created on first use and locked; None while another replica holds it."""
    await session.execute(
        insert(RecoveryJob).values(name=name).on_conflict_do_nothing(index_elements=["name"])
    )
    statement = (
        select(RecoveryJob)
        .where(RecoveryJob.name == name)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(statement)).one_or_none()


async def finish_job(
    session: AsyncSession,
    name: str,
    *,
    started_at: datetime,
    succeeded: bool,
    summary: dict[str, Any] | None,
    error: str | None,
) -> None:
    values: dict[str, Any] = {
        "running_until": None,
        "last_finished_at": func.clock_timestamp(),
        "last_summary": summary,
        "last_error": error,
    }
    if succeeded:
        values["last_success_started_at"] = started_at
    statement = (
        update(RecoveryJob)
        # Only the run that started then: a run that outlived its lease and was retaken by
        # another replica must not overwrite the newer run's record.
        .where(RecoveryJob.name == name, RecoveryJob.last_started_at == started_at)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    await session.execute(statement)
