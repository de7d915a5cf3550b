"""Every SQL statement on `idempotency_keys` (the finisher's look-up joins the transaction a key
wrote, read-only; the staleness checks ask `app.processes` whether a claim's holder is gone)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.funding.models import Transaction, TransactionStatus
from app.idempotency.models import IdempotencyKey
from app.processes.repository import holder_gone

STARTED = "started"
INTENT_WRITTEN = "intent_written"
FINISHED = "finished"
# A transaction whose outcome at Bakkt is not known yet: its request's answer cannot be stored.
_UNSETTLED = (TransactionStatus.SUBMITTING, TransactionStatus.UNKNOWN)


def _stale(stale_after: timedelta) -> ColumnElement[bool]:
    """A claim nobody is working on: its lease ran out, or the process holding it is gone."""
    return or_(
        IdempotencyKey.locked_until <= func.clock_timestamp(),
        holder_gone(IdempotencyKey.holder_id, stale_after),
    )


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
    holder_id: uuid.UUID | None,
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
        "holder_id": holder_id,
        "response_kind": None,
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
    session: AsyncSession, party_ref: str, key: str, *, stale_after: timedelta
) -> tuple[IdempotencyKey, datetime, bool] | None:
    """The key's row, the database's clock (every replica judges leases by the same clock), and
    whether the process holding it is gone. Only a claim that lost the insert comes here, so the
    heartbeat is looked at only then, never on a new key's path."""
    stmt = (
        select(
            IdempotencyKey,
            func.clock_timestamp(),
            holder_gone(IdempotencyKey.holder_id, stale_after),
        )
        .where(IdempotencyKey.party_ref == party_ref, IdempotencyKey.key == key)
        .execution_options(populate_existing=True)
    )
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None else (row[0], row[1], bool(row[2]))


async def take_over(
    session: AsyncSession,
    key_id: int,
    lease: timedelta,
    *,
    holder_id: uuid.UUID | None,
    stale_after: timedelta,
) -> IdempotencyKey | None:
    """Renew a stale claim in `holder_id`'s name; None when someone else renewed or finished it
    first. A claim whose holder is in the middle of writing its intent waits here for that
    write's row lock, then is re-checked, and is returned with the intent the holder wrote."""
    stmt = (
        update(IdempotencyKey)
        .where(
            IdempotencyKey.id == key_id,
            IdempotencyKey.recovery_point != FINISHED,
            _stale(stale_after),
        )
        .values(locked_until=func.clock_timestamp() + lease, holder_id=holder_id)
        .returning(IdempotencyKey)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


async def set_intent(session: AsyncSession, key_id: int, transaction_id: uuid.UUID | None) -> bool:
    """Point the claim at its intent; False when the claim already has one (or is gone). Two
    holders of one claim (a live one believed dead, and its taker) may both write an intent;
    only the first to commit gets here with a row, the other's transaction must roll back."""
    stmt = (
        update(IdempotencyKey)
        .where(IdempotencyKey.id == key_id, IdempotencyKey.recovery_point == STARTED)
        .values(recovery_point=INTENT_WRITTEN, transaction_id=transaction_id)
        .returning(IdempotencyKey.id)
    )
    return (await session.execute(stmt)).one_or_none() is not None


async def finish(
    session: AsyncSession, key_id: int, kind: str, body: Any, *, legacy_status: int
) -> bool:
    """Store the answer to replay; False if another holder of the key finished it first."""
    stmt = (
        update(IdempotencyKey)
        .where(IdempotencyKey.id == key_id, IdempotencyKey.recovery_point != FINISHED)
        .values(
            recovery_point=FINISHED,
            locked_until=None,
            response_kind=kind,
            response_status=legacy_status,
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


async def stored_answer(
    session: AsyncSession, key_id: int
) -> tuple[str | None, int | None, Any] | None:
    """A finished key's (kind, legacy status, body), for `answers.stored`."""
    stmt = select(
        IdempotencyKey.response_kind, IdempotencyKey.response_status, IdempotencyKey.response_body
    ).where(IdempotencyKey.id == key_id, IdempotencyKey.recovery_point == FINISHED)
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


async def delete_unfinished(session: AsyncSession, key_id: int) -> None:
    await session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.id == key_id, IdempotencyKey.recovery_point != FINISHED
        )
    )


async def delete_started(session: AsyncSession, key_id: int) -> None:
    """Drop a claim that has no intent yet; one whose intent another holder wrote stays."""
    await session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.id == key_id, IdempotencyKey.recovery_point == STARTED
        )
    )


async def abandoned_requests(
    session: AsyncSession, *, limit: int, stale_after: timedelta
) -> list[tuple[int, uuid.UUID]]:
    """Keys whose request wrote its transaction and then died (lease run out, or its process
    gone), where the transaction has since been settled: (key id, transaction id)."""
    statement = (
        select(IdempotencyKey.id, Transaction.id)
        .join(Transaction, Transaction.id == IdempotencyKey.transaction_id)
        .where(
            IdempotencyKey.recovery_point == INTENT_WRITTEN,
            _stale(stale_after),
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
