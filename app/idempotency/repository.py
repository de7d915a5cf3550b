"""Every SQL statement on `idempotency_keys` (the finisher's look-up joins the transaction a key
wrote, read-only)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.funding.models import Transaction, TransactionStatus
from app.idempotency.models import IdempotencyKey

STARTED = "started"
INTENT_WRITTEN = "intent_written"
FINISHED = "finished"
# A transaction whose outcome at Bakkt is not known yet: its request's answer cannot be stored.
_UNSETTLED = (TransactionStatus.SUBMITTING, TransactionStatus.UNKNOWN)


async def claim_new(
    session: AsyncSession,
    *,
    party_ref: str,
    key: str,
    method: str,
    path: str,
    fingerprint: str,
    lease: timedelta,
    ttl: timedelta,
) -> IdempotencyKey | None:
    """Insert the key, or recycle an expired row of it; None when a live row already holds it.

    One statement, so two concurrent claims of the same key cannot both succeed: the loser of
    the unique index waits for the winner's commit and then gets no row back.
    """
    fresh: dict[str, Any] = {
        "request_method": method,
        "request_path": path,
        "fingerprint": fingerprint,
        "recovery_point": STARTED,
        "locked_until": func.clock_timestamp() + lease,
        "response_status": None,
        "response_body": None,
        "transaction_id": None,
        "created_at": func.clock_timestamp(),
        "expires_at": func.clock_timestamp() + ttl,
    }
    stmt = (
        insert(IdempotencyKey)
        .values(party_ref=party_ref, key=key, **fresh)
        .on_conflict_do_update(
            constraint="uq_idempotency_keys_party_key",
            set_=fresh,
            where=IdempotencyKey.expires_at <= func.clock_timestamp(),
        )
        .returning(IdempotencyKey)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


async def get_with_now(
    session: AsyncSession, party_ref: str, key: str
) -> tuple[IdempotencyKey, datetime] | None:
    """The key's row and the database's clock: every replica judges leases by the same clock."""
    stmt = (
        select(IdempotencyKey, func.clock_timestamp())
        .where(IdempotencyKey.party_ref == party_ref, IdempotencyKey.key == key)
        .execution_options(populate_existing=True)
    )
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None else (row[0], row[1])


async def take_over(session: AsyncSession, key_id: int, lease: timedelta) -> IdempotencyKey | None:
    """Renew a stale lease; None when someone else renewed or finished it first."""
    stmt = (
        update(IdempotencyKey)
        .where(
            IdempotencyKey.id == key_id,
            IdempotencyKey.recovery_point != FINISHED,
            IdempotencyKey.locked_until <= func.clock_timestamp(),
        )
        .values(locked_until=func.clock_timestamp() + lease)
        .returning(IdempotencyKey)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


async def set_intent(session: AsyncSession, key_id: int, transaction_id: uuid.UUID | None) -> None:
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == key_id)
        .values(recovery_point=INTENT_WRITTEN, transaction_id=transaction_id)
    )


async def finish(session: AsyncSession, key_id: int, status: int, body: Any) -> bool:
    """Store the response to replay; False if another holder of the key finished it first."""
    stmt = (
        update(IdempotencyKey)
        .where(IdempotencyKey.id == key_id, IdempotencyKey.recovery_point != FINISHED)
        .values(
            recovery_point=FINISHED,
            locked_until=None,
            response_status=status,
            response_body=body,
        )
        .returning(IdempotencyKey.id)
    )
    return (await session.execute(stmt)).one_or_none() is not None


async def end_lease(session: AsyncSession, key_id: int) -> None:
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == key_id, IdempotencyKey.recovery_point != FINISHED)
        .values(locked_until=func.clock_timestamp())
    )


async def stored_response(session: AsyncSession, key_id: int) -> tuple[int, Any] | None:
    stmt = select(IdempotencyKey.response_status, IdempotencyKey.response_body).where(
        IdempotencyKey.id == key_id, IdempotencyKey.recovery_point == FINISHED
    )
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None or row[0] is None else (int(row[0]), row[1])


async def delete_unfinished(session: AsyncSession, key_id: int) -> None:
    await session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.id == key_id, IdempotencyKey.recovery_point != FINISHED
        )
    )


async def abandoned_requests(session: AsyncSession, *, limit: int) -> list[tuple[int, uuid.UUID]]:
    """Keys whose request wrote its transaction and then died (lease run out), where the
    transaction has since been settled: (key id, transaction id)."""
    statement = (
        select(IdempotencyKey.id, Transaction.id)
        .join(Transaction, Transaction.id == IdempotencyKey.transaction_id)
        .where(
            IdempotencyKey.recovery_point == INTENT_WRITTEN,
            IdempotencyKey.locked_until <= func.clock_timestamp(),
            Transaction.status.not_in(_UNSETTLED),
        )
        .order_by(IdempotencyKey.id)
        .limit(limit)
    )
    return [(int(k), t) for k, t in (await session.execute(statement)).all()]


async def delete_expired(session: AsyncSession, *, now: datetime, limit: int) -> int:
    """Delete up to `limit` keys past `expires_at` (retention)."""
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
