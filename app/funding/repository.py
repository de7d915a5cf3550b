"""Every SQL statement of the funding domain."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.funding.models import (
    BankAccount,
    Party,
    PartyLimit,
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


async def db_now(session: AsyncSession) -> datetime:
    """The database's clock now (not the transaction's start, which `now()` would give)."""
    now: datetime = (await session.execute(select(func.clock_timestamp()))).scalar_one()
    return now


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
