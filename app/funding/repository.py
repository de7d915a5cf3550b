"""Every SQL statement of the funding domain, and those on its tables that the webhook receiver
and reconciliation both make."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.funding.models import (
    BankAccount,
    BankAccountStatus,
    Party,
    PartyLimit,
    PartyStatus,
    Transaction,
    TransactionHistory,
    TransactionOrigin,
    TransactionStatus,
)

# Transactions that never moved money do not count against a limit.
NOT_COUNTED = (TransactionStatus.FAILED, TransactionStatus.DECLINED, TransactionStatus.CANCELLED)


async def lock_party(session: AsyncSession, party_ref: str) -> Party:
    """The party row, created on first use, locked until the caller's transaction ends.

    Every money request of a party takes this lock before it reads its limits' windows, so two
    concurrent requests cannot both see room for themselves and together overshoot.
    """
    await session.execute(
        insert(Party)
        .values(party_ref=party_ref)
        .on_conflict_do_nothing(index_elements=["party_ref"])
    )
    stmt = (
        select(Party)
        .where(Party.party_ref == party_ref)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one()


async def get_party(session: AsyncSession, party_ref: str) -> Party | None:
    return await session.get(Party, party_ref, populate_existing=True)


async def get_limit(session: AsyncSession, party_ref: str, direction: str) -> PartyLimit | None:
    return await session.get(PartyLimit, (party_ref, direction), populate_existing=True)


async def sum_since(session: AsyncSession, party_ref: str, tx_type: str, since: datetime) -> int:
    """Cents of the party's own transfers of `tx_type` created since `since` that may move money."""
    stmt = select(func.coalesce(func.sum(Transaction.amount_cents), 0)).where(
        Transaction.party_ref == party_ref,
        Transaction.type == tx_type,
        Transaction.origin == TransactionOrigin.PARTNER,
        Transaction.created_at >= since,
        Transaction.status.not_in(NOT_COUNTED),
    )
    return int((await session.execute(stmt)).scalar_one())


# --- bank accounts ----------------------------------------------------------------------------


def add_bank_account(session: AsyncSession, account: BankAccount) -> None:
    session.add(account)


async def get_bank_account(
    session: AsyncSession, party_ref: str, account_id: uuid.UUID, *, lock: bool = False
) -> BankAccount | None:
    stmt = (
        select(BankAccount)
        .where(BankAccount.id == account_id, BankAccount.party_ref == party_ref)
        .execution_options(populate_existing=True)
    )
    if lock:
        stmt = stmt.with_for_update()
    return (await session.scalars(stmt)).one_or_none()


async def list_bank_accounts(session: AsyncSession, party_ref: str) -> Sequence[BankAccount]:
    stmt = (
        select(BankAccount)
        .where(BankAccount.party_ref == party_ref)
        .order_by(BankAccount.created_at.desc(), BankAccount.id.desc())
    )
    return (await session.scalars(stmt)).all()


async def newest_bank_account(
    session: AsyncSession, party_ref: str, statuses: Sequence[str]
) -> BankAccount | None:
    stmt = (
        select(BankAccount)
        .where(BankAccount.party_ref == party_ref, BankAccount.status.in_(statuses))
        .order_by(BankAccount.updated_at.desc(), BankAccount.created_at.desc())
        .limit(1)
    )
    return (await session.scalars(stmt)).one_or_none()


async def delete_bank_account(session: AsyncSession, account_id: uuid.UUID) -> None:
    account = await session.get(BankAccount, account_id)
    if account is not None:
        await session.delete(account)


# --- transactions -----------------------------------------------------------------------------


def add_transaction(session: AsyncSession, txn: Transaction) -> None:
    session.add(txn)


async def get_transaction(
    session: AsyncSession, party_ref: str, transaction_id: uuid.UUID
) -> Transaction | None:
    stmt = (
        select(Transaction)
        .where(Transaction.id == transaction_id, Transaction.party_ref == party_ref)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


async def lock_transaction(session: AsyncSession, transaction_id: uuid.UUID) -> Transaction:
    """The row lock every status move is made under (the webhook receiver takes the same one)."""
    stmt = (
        select(Transaction)
        .where(Transaction.id == transaction_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one()


async def list_transactions(
    session: AsyncSession,
    party_ref: str,
    *,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
    statuses: Sequence[str],
    types: Sequence[str],
    created_from: datetime | None,
    created_to: datetime | None,
) -> Sequence[Transaction]:
    """Newest first, keyset-paginated on (created_at, id): `before` is the last row seen."""
    stmt = select(Transaction).where(Transaction.party_ref == party_ref)
    if before is not None:
        stmt = stmt.where(tuple_(Transaction.created_at, Transaction.id) < tuple_(*before))
    if statuses:
        stmt = stmt.where(Transaction.status.in_(statuses))
    if types:
        stmt = stmt.where(Transaction.type.in_(types))
    if created_from is not None:
        stmt = stmt.where(Transaction.created_at >= created_from)
    if created_to is not None:
        stmt = stmt.where(Transaction.created_at < created_to)
    stmt = stmt.order_by(Transaction.created_at.desc(), Transaction.id.desc()).limit(limit)
    return (await session.scalars(stmt)).all()


async def history(session: AsyncSession, transaction_id: uuid.UUID) -> Sequence[TransactionHistory]:
    stmt = (
        select(TransactionHistory)
        .where(TransactionHistory.transaction_id == transaction_id)
        .order_by(TransactionHistory.recorded_at, TransactionHistory.id)
    )
    return (await session.scalars(stmt)).all()


# --- on Bakkt's word (the webhook receiver and reconciliation) ---------------------------------
# Their row locks are `FOR NO KEY UPDATE`: it excludes every other writer exactly like
# `FOR UPDATE`, but not the `KEY SHARE` lock a foreign-key check takes, so inserting a fee that
# points at a locked transfer does not wait for (or deadlock with) it.


async def ensure_party(session: AsyncSession, party_ref: str, *, now: datetime) -> None:
    """A party row for a party Bakkt tells us about first; an existing row is left alone."""
    statement = (
        insert(Party)
        .values(party_ref=party_ref, status=PartyStatus.ACTIVE, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=[Party.party_ref])
    )
    await session.execute(statement)


async def lock_transaction_by_ref(session: AsyncSession, bakkt_ref: str) -> Transaction | None:
    statement = (
        select(Transaction)
        .where(Transaction.bakkt_ref == bakkt_ref)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(statement)).one_or_none()


async def transaction_id_by_ref(session: AsyncSession, bakkt_ref: str) -> uuid.UUID | None:
    statement = select(Transaction.id).where(Transaction.bakkt_ref == bakkt_ref)
    return (await session.execute(statement)).scalar_one_or_none()


async def insert_bakkt_transaction(
    session: AsyncSession,
    *,
    party_ref: str,
    bakkt_ref: str,
    type_: str,
    method: str | None,
    status: str,
    amount_cents: int,
    currency: str,
    reason_code: str | None,
    reason_description: str | None,
    related_transaction_id: uuid.UUID | None,
    status_event_time: datetime,
    created_at: datetime,
    now: datetime,
) -> uuid.UUID | None:
    """A transaction Bakkt started; None when it exists already (a concurrent event, or its
    webhook before reconciliation, created it first)."""
    statement = (
        insert(Transaction)
        .values(
            id=uuid.uuid4(),
            party_ref=party_ref,
            type=type_,
            method=method,
            origin=TransactionOrigin.BAKKT,
            status=status,
            amount_cents=amount_cents,
            currency=currency,
            reason_code=reason_code,
            reason_description=reason_description,
            bakkt_ref=bakkt_ref,
            related_transaction_id=related_transaction_id,
            status_event_time=status_event_time,
            created_at=created_at,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[Transaction.bakkt_ref])
        .returning(Transaction.id)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def disable_bank_account(
    session: AsyncSession, account_id: uuid.UUID, *, reason_code: str, now: datetime
) -> bool:
    """DISABLED is where an unusable account stays: the first return code that disabled it is
    kept, so a later event cannot re-enable or re-label it."""
    statement = (
        update(BankAccount)
        .where(BankAccount.id == account_id, BankAccount.status != BankAccountStatus.DISABLED)
        .values(status=BankAccountStatus.DISABLED, reason_code=reason_code, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(statement)
    return bool(getattr(result, "rowcount", 0))


async def flag_bank_account_for_review(
    session: AsyncSession, account_id: uuid.UUID, *, now: datetime
) -> bool:
    statement = (
        update(BankAccount)
        .where(BankAccount.id == account_id, BankAccount.needs_review.is_(False))
        .values(needs_review=True, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(statement)
    return bool(getattr(result, "rowcount", 0))
