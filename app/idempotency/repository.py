"""Every SQL statement on `idempotency_keys` (the finisher's look-up joins the transaction a key
wrote, read-only; the staleness checks ask `app.processes` whether a claim's holder is gone)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    CTE,
    ColumnElement,
    FromClause,
    Interval,
    Table,
    and_,
    bindparam,
    delete,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import UUID, insert
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


_KEYS = cast(Table, IdempotencyKey.__table__)
_NOW = func.clock_timestamp()
# The claim, built once (issue 11: a statement rebuilt per request pays SQLAlchemy's
# construction and cache-key walk every time). Insert the key, or recycle an expired row of it;
# a live row is left alone.
_NEW_KEY = insert(_KEYS).values(
    party_ref=bindparam("party_ref"),
    key=bindparam("key"),
    request_method=bindparam("method"),
    request_path=bindparam("path"),
    fingerprint=bindparam("fingerprint"),
    recovery_point=STARTED,
    locked_until=_NOW + bindparam("lease", type_=Interval),
    holder_id=bindparam("holder_id", type_=UUID(as_uuid=True)),
    response_kind=None,
    response_status=None,
    response_body=None,
    transaction_id=None,
    created_at=_NOW,
    expires_at=_NOW + bindparam("ttl", type_=Interval),
)
_RECYCLED = {
    name: _NEW_KEY.excluded[name]
    for name in (
        "request_method",
        "request_path",
        "fingerprint",
        "recovery_point",
        "locked_until",
        "holder_id",
        "response_kind",
        "response_status",
        "response_body",
        "transaction_id",
        "created_at",
        "expires_at",
    )
}
_CLAIMED = (
    _NEW_KEY.on_conflict_do_update(
        constraint="uq_idempotency_keys_party_key",
        set_=_RECYCLED,
        where=_KEYS.c.expires_at <= _NOW,
    )
    .returning(_KEYS.c.id, _KEYS.c.created_at, _KEYS.c.recovery_point)
    .cte("claimed")
)
# One row whatever happens: the new claim's columns, or (when a live row holds the key) that
# row's, with the database's clock (every replica judges leases by the same clock) and whether
# the process holding it is gone. The existing row is read from the statement's snapshot: one
# committed by a concurrent claim after it began is not seen, and both halves come back empty.
_CLAIM_OR_READ = select(
    _CLAIMED.c.id.label("claimed_id"),
    _CLAIMED.c.created_at.label("claimed_at"),
    _CLAIMED.c.recovery_point.label("claimed_point"),
    _KEYS.c.id,
    _KEYS.c.fingerprint,
    _KEYS.c.recovery_point,
    _KEYS.c.locked_until,
    _KEYS.c.response_kind,
    _KEYS.c.response_status,
    _KEYS.c.response_body,
    _NOW.label("now"),
    holder_gone(_KEYS.c.holder_id, bindparam("stale_after", type_=Interval)).label("holder_gone"),
).select_from(
    select(literal(1).label("one"))
    .subquery("one")
    .outerjoin(_CLAIMED, true())
    .outerjoin(
        _KEYS,
        and_(
            _KEYS.c.party_ref == bindparam("party_ref"),
            _KEYS.c.key == bindparam("key"),
            _CLAIMED.c.id.is_(None),
        ),
    )
)


@dataclass(frozen=True, slots=True)
class NewKey:
    """We hold the key now (inserted, or an expired row of it recycled)."""

    id: int
    created_at: datetime
    recovery_point: str


@dataclass(frozen=True, slots=True)
class HeldKey:
    """A live row holds the key: what it says, judged by the database's clock."""

    id: int
    fingerprint: str
    recovery_point: str
    locked_until: datetime | None
    response_kind: str | None
    response_status: int | None
    response_body: Any
    now: datetime
    holder_gone: bool


async def claim_or_read(
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
    stale_after: timedelta,
) -> NewKey | HeldKey | None:
    """Claim the key, or read the live row that holds it, in one statement. None when neither
    happened: a concurrent claim committed the row after this statement began (read again).

    Two concurrent claims of the same key cannot both succeed: the loser of the unique index
    waits for the winner's commit and then gets no row back from its insert.
    """
    params = {
        "party_ref": party_ref,
        "key": key,
        "method": method,
        "path": path,
        "fingerprint": fingerprint,
        "lease": lease,
        "ttl": ttl,
        "holder_id": holder_id,
        "stale_after": stale_after,
    }
    row = (await session.execute(_CLAIM_OR_READ, params)).one()
    if row.claimed_id is not None:
        return NewKey(int(row.claimed_id), row.claimed_at, row.claimed_point)
    if row.id is None:
        return None
    return HeldKey(
        id=int(row.id),
        fingerprint=row.fingerprint,
        recovery_point=row.recovery_point,
        locked_until=row.locked_until,
        response_kind=row.response_kind,
        response_status=row.response_status,
        response_body=row.response_body,
        now=row.now,
        holder_gone=bool(row.holder_gone),
    )


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


# Pointing a claim at its intent, for the statement that writes the intent (funding's
# `insert_intent` selects its row FROM it, so one statement does both): a row comes out only
# while the claim has no intent yet. Parameters: key_id, transaction_id.
INTENT_CLAIM = (
    update(_KEYS)
    .where(_KEYS.c.id == bindparam("key_id"), _KEYS.c.recovery_point == STARTED)
    .values(
        recovery_point=INTENT_WRITTEN,
        transaction_id=bindparam("transaction_id", type_=UUID(as_uuid=True)),
    )
    .returning(_KEYS.c.id)
    .cte("intent_claim")
)


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


def finish_claim(*, after: FromClause | None = None) -> CTE:
    """Storing the answer, for a statement that makes the change it answers for in the same
    round trip (funding's `record_outcome`): a row comes out only when this claim stored its
    answer; with `after`, only when `after` yields a row too (the change happened).
    Parameters: `finish_params`."""
    finished = update(_KEYS).where(
        _KEYS.c.id == bindparam("key_id"), _KEYS.c.recovery_point != FINISHED
    )
    if after is not None:
        finished = finished.where(select(literal(1)).select_from(after).exists())
    return (
        finished.values(
            recovery_point=FINISHED,
            locked_until=None,
            response_kind=bindparam("response_kind", type_=_KEYS.c.response_kind.type),
            response_status=bindparam("response_status", type_=_KEYS.c.response_status.type),
            response_body=bindparam("response_body", type_=_KEYS.c.response_body.type),
        )
        .returning(_KEYS.c.id)
        .cte("finish_claim")
    )


def finish_params(key_id: int, kind: str, body: Any, *, legacy_status: int) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "response_kind": kind,
        "response_status": legacy_status,
        "response_body": body,
    }


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
