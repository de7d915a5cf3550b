"""Every SQL statement of the webhook receiver, including those on the funding tables it moves;
the few that reconciliation makes too are in `app.funding.repository`.

Row locks on transactions, parties and bank accounts are `FOR NO KEY UPDATE`: it excludes every
other writer exactly like `FOR UPDATE`, but not the `KEY SHARE` lock a foreign-key check takes, so
inserting a fee that points at a locked transfer does not wait for (or deadlock with) it.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.models import OperatorAlert
from app.funding.models import (
    BankAccount,
    HistorySource,
    Party,
    Transaction,
    TransactionHistory,
    TransactionOrigin,
)
from app.webhooks.models import EventStatus, WebhookEvent

ORPHAN_WINDOW = timedelta(days=7)

# -- webhook events ------------------------------------------------------------------------------


async def insert_event(
    session: AsyncSession,
    *,
    request_id: str,
    event_type: str | None,
    party_ref: str | None,
    transaction_ref: str | None,
    related_ref: str | None,
    body: bytes,
    headers: dict[str, str],
    event_time: datetime | None,
    received_at: datetime,
    status: EventStatus,
    outcome: str | None,
    needs_operator: bool,
    next_attempt_at: datetime | None,
) -> int | None:
    """The new row's id, or None when an event with this requestId is already stored.

    A concurrent insert of the same requestId waits here until the first one commits (or rolls
    back), so at most one delivery of an event ever gets an id back.
    """
    statement = (
        insert(WebhookEvent)
        .values(
            request_id=request_id,
            event_type=event_type,
            party_ref=party_ref,
            transaction_ref=transaction_ref,
            related_ref=related_ref,
            body=body,
            headers=headers,
            event_time=event_time,
            received_at=received_at,
            status=status,
            outcome=outcome,
            needs_operator=needs_operator,
            next_attempt_at=next_attempt_at,
            attempts=0,
        )
        .on_conflict_do_nothing(index_elements=[WebhookEvent.request_id])
        .returning(WebhookEvent.id)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def event_status(session: AsyncSession, request_id: str) -> str | None:
    statement = select(WebhookEvent.status).where(WebhookEvent.request_id == request_id)
    return (await session.execute(statement)).scalar_one_or_none()


async def claim_event(
    session: AsyncSession, *, request_id: str, statuses: Collection[EventStatus]
) -> WebhookEvent | None:
    """Lock one event for applying, unless another worker holds it (then None)."""
    statement = (
        select(WebhookEvent)
        .where(WebhookEvent.request_id == request_id, WebhookEvent.status.in_(statuses))
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def claim_due_event(
    session: AsyncSession, *, now: datetime, skip: Collection[int] = ()
) -> WebhookEvent | None:
    """The oldest due event that waits to be (re)applied, locked; others' claims are skipped."""
    statement = (
        select(WebhookEvent)
        .where(
            WebhookEvent.status.in_((EventStatus.RECEIVED, EventStatus.PARKED)),
            WebhookEvent.next_attempt_at <= now,
            WebhookEvent.id.not_in(skip),
        )
        .order_by(WebhookEvent.next_attempt_at, WebhookEvent.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def record_apply_failure(
    session: AsyncSession,
    *,
    event_pk: int,
    outcome: str,
    next_attempt_at: datetime | None,
    give_up: bool,
) -> None:
    statement = (
        update(WebhookEvent)
        .where(WebhookEvent.id == event_pk, WebhookEvent.status == EventStatus.RECEIVED)
        .values(
            attempts=WebhookEvent.attempts + 1,
            outcome=outcome,
            next_attempt_at=None if give_up else next_attempt_at,
            needs_operator=WebhookEvent.needs_operator | give_up,
        )
    )
    await session.execute(statement)


async def event_attempts(session: AsyncSession, event_pk: int) -> int:
    statement = select(WebhookEvent.attempts).where(WebhookEvent.id == event_pk)
    return (await session.execute(statement)).scalar_one()


# -- transactions --------------------------------------------------------------------------------


async def link_orphan_relations(
    session: AsyncSession, *, related_ref: str | None = None, now: datetime
) -> int:
    """Point Bakkt-started rows (fees, adjustments) at the transfer their event named, once that
    transfer is known. `related_ref` narrows it to one transfer; None sweeps the events of the
    last ORPHAN_WINDOW (bounded work on every run; older gaps are reconciliation's)."""
    related = Transaction.__table__.alias("related")
    conditions = [
        WebhookEvent.transaction_ref == Transaction.bakkt_ref,
        WebhookEvent.related_ref == related.c.bakkt_ref,
        Transaction.related_transaction_id.is_(None),
        Transaction.origin == TransactionOrigin.BAKKT,
        related.c.id != Transaction.id,
    ]
    if related_ref is not None:
        conditions.append(WebhookEvent.related_ref == related_ref)
    else:
        conditions.append(WebhookEvent.related_ref.is_not(None))
        conditions.append(WebhookEvent.received_at >= func.now() - ORPHAN_WINDOW)
    statement = (
        update(Transaction)
        .where(*conditions)
        .values(related_transaction_id=related.c.id, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


async def add_unapplied_history(
    session: AsyncSession,
    *,
    transaction_id: uuid.UUID,
    from_status: str,
    to_status: str,
    event_id: str,
    event_time: datetime,
    reason_code: str | None,
    note: str,
) -> None:
    """A seen-but-not-applied record (held for review): not a move, so not through transition."""
    session.add(
        TransactionHistory(
            transaction_id=transaction_id,
            from_status=from_status,
            to_status=to_status,
            source=HistorySource.WEBHOOK,
            event_id=event_id,
            reason_code=reason_code,
            applied=False,
            note=note,
            event_time=event_time,
        )
    )


# -- parties -------------------------------------------------------------------------------------


async def insert_party(
    session: AsyncSession,
    *,
    party_ref: str,
    status: str,
    reason: str | None,
    event_time: datetime,
    now: datetime,
) -> bool:
    statement = (
        insert(Party)
        .values(
            party_ref=party_ref,
            status=status,
            status_reason=reason,
            status_event_time=event_time,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[Party.party_ref])
        .returning(Party.party_ref)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def lock_party(session: AsyncSession, party_ref: str) -> Party | None:
    statement = (
        select(Party)
        .where(Party.party_ref == party_ref)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(statement)).scalar_one_or_none()


# -- bank accounts -------------------------------------------------------------------------------


async def lock_bank_account_by_link_ref(session: AsyncSession, link_ref: str) -> BankAccount | None:
    statement = (
        select(BankAccount)
        .where(BankAccount.link_ref == link_ref)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def insert_bank_account(
    session: AsyncSession,
    *,
    party_ref: str,
    link_ref: str,
    link_method: str,
    status: str,
    bank_name: str | None,
    account_mask: str | None,
    account_type: str | None,
    reason_code: str | None,
    event_time: datetime,
    now: datetime,
) -> bool:
    statement = (
        insert(BankAccount)
        .values(
            id=uuid.uuid4(),
            party_ref=party_ref,
            link_ref=link_ref,
            link_method=link_method,
            status=status,
            bank_name=bank_name,
            account_mask=account_mask,
            account_type=account_type,
            reason_code=reason_code,
            status_event_time=event_time,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[BankAccount.link_ref])
        .returning(BankAccount.id)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


# -- alerts --------------------------------------------------------------------------------------


def add_alert(
    session: AsyncSession, *, kind: str, subject: str, detail: str, data: dict[str, Any]
) -> None:
    session.add(OperatorAlert(kind=kind, subject=subject[:255], detail=detail, data=data))
