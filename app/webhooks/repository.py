"""Every SQL statement on stored webhook events. What applying an event does to parties, bank
accounts and transactions is funding's SQL (`app.funding.repository`)."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from app.db import driver_connection
from app.webhooks.models import EventStatus, WebhookEvent

ORPHAN_WINDOW = timedelta(days=7)

# -- webhook events ------------------------------------------------------------------------------


_EVENTS = cast(Table, WebhookEvent.__table__)
# Hot-path statements are built once: a statement object reused with bound parameters keeps its
# cache key and its compiled form, where one rebuilt per call pays SQLAlchemy's construction,
# coercion and cache-key walk on every delivery (issue 11's profile). Core statements on the
# table skip the ORM's bulk-insert machinery, which nothing here needs.
_INSERT_EVENT = (
    insert(_EVENTS)
    .on_conflict_do_nothing(index_elements=[_EVENTS.c.request_id])
    .returning(_EVENTS.c.id)
)
_EVENT_STATUS = select(_EVENTS.c.status).where(_EVENTS.c.request_id == bindparam("request_id"))
_CLAIM_EVENT = (
    select(WebhookEvent)
    .where(
        WebhookEvent.request_id == bindparam("request_id"),
        WebhookEvent.status.in_(bindparam("statuses", expanding=True)),
    )
    .with_for_update(skip_locked=True)
    # The intake holds the parsed body already: neither the body nor the headers (JSON to
    # decode) are loaded again, and touching them would raise instead of loading lazily.
    .options(defer(WebhookEvent.body, raiseload=True), defer(WebhookEvent.headers, raiseload=True))
    .execution_options(populate_existing=True)
)


# The intake's one statement: insert the event, or (a redelivery) read the stored one's status
# and whether its body is byte for byte the one sent. One row whatever happens. The stored row
# is read from the statement's snapshot: one committed by a concurrent delivery after it began
# is not seen, and both halves come back empty. Sent through the driver
# (`app.db.driver_connection`): it runs on every delivery, and asyncpg's cached prepared
# statement costs a fraction of SQLAlchemy's execute path for it (issue 11's profile: 11% of
# the intake's samples).
_INSERT_OR_READ_SQL = """
WITH inserted AS (
    INSERT INTO webhook_events (
        request_id, event_type, party_ref, transaction_ref, related_ref, body, headers,
        event_time, received_at, status, outcome, attempts, next_attempt_at, needs_operator
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, 0, $12, $13)
    ON CONFLICT (request_id) DO NOTHING
    RETURNING id
)
SELECT inserted.id AS inserted_id, stored.id, stored.status, stored.body = $6 AS same_body
FROM (SELECT 1) AS one
LEFT JOIN inserted ON true
LEFT JOIN webhook_events AS stored ON stored.request_id = $1 AND inserted.id IS NULL
"""
# What applying a new event came to, on the row this transaction has just inserted; through
# the driver for the same reason as the insert.
_RECORD_OUTCOME_SQL = """
UPDATE webhook_events
SET status = $2, outcome = $3, attempts = $4, next_attempt_at = $5, needs_operator = $6,
    processed_at = $7
WHERE id = $1
"""


_READ_STORED = select(
    _EVENTS.c.id, _EVENTS.c.status, (_EVENTS.c.body == bindparam("body")).label("same_body")
).where(_EVENTS.c.request_id == bindparam("request_id"))


@dataclass(frozen=True, slots=True)
class InsertedEvent:
    """Stored now, by this transaction (which holds the row until it ends)."""

    id: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """Stored already. `same_body` is None when retention has cleared the stored body."""

    id: int
    status: str
    same_body: bool | None


async def insert_or_read_event(
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
) -> InsertedEvent | StoredEvent | None:
    """Store an event, or say what the stored one with this requestId is; None when it was
    stored by a concurrent delivery after this statement began (read it again).

    A concurrent insert of the same requestId waits here until the first one commits (or rolls
    back), so at most one delivery of an event is ever InsertedEvent.
    """
    connection = await driver_connection(session)
    row = await connection.fetchrow(
        _INSERT_OR_READ_SQL,
        request_id,
        event_type,
        party_ref,
        transaction_ref,
        related_ref,
        body,
        json.dumps(headers),
        event_time,
        received_at,
        str(status),
        outcome,
        next_attempt_at,
        needs_operator,
    )
    if row is None:  # pragma: no cover - the statement returns one row whatever happens
        raise RuntimeError(f"webhook event {request_id}: the insert returned no row")
    if row["inserted_id"] is not None:
        return InsertedEvent(int(row["inserted_id"]))
    if row["id"] is None:
        return None
    return StoredEvent(int(row["id"]), row["status"], row["same_body"])


async def read_stored_event(
    session: AsyncSession, request_id: str, body: bytes
) -> StoredEvent | None:
    """`insert_or_read_event`'s second half on its own, for when a concurrent delivery stored
    the event after that statement began."""
    row = (
        await session.execute(_READ_STORED, {"request_id": request_id, "body": body})
    ).one_or_none()
    return None if row is None else StoredEvent(int(row.id), row.status, row.same_body)


async def record_outcome(
    session: AsyncSession,
    event_pk: int,
    *,
    status: str,
    outcome: str,
    attempts: int,
    next_attempt_at: datetime | None,
    needs_operator: bool,
    processed_at: datetime,
) -> None:
    """What applying the event came to, on its row."""
    connection = await driver_connection(session)
    await connection.execute(
        _RECORD_OUTCOME_SQL,
        event_pk,
        status,
        outcome,
        attempts,
        next_attempt_at,
        needs_operator,
        processed_at,
    )


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
    params = {
        "request_id": request_id,
        "event_type": event_type,
        "party_ref": party_ref,
        "transaction_ref": transaction_ref,
        "related_ref": related_ref,
        "body": body,
        "headers": headers,
        "event_time": event_time,
        "received_at": received_at,
        "status": str(status),
        "outcome": outcome,
        "needs_operator": needs_operator,
        "next_attempt_at": next_attempt_at,
        "attempts": 0,
    }
    event_pk: int | None = (await session.execute(_INSERT_EVENT, params)).scalar_one_or_none()
    return event_pk


async def event_body(session: AsyncSession, request_id: str) -> bytes | None:
    statement = select(WebhookEvent.body).where(WebhookEvent.request_id == request_id)
    return (await session.execute(statement)).scalar_one_or_none()


async def event_status(session: AsyncSession, request_id: str) -> str | None:
    status: str | None = (
        await session.execute(_EVENT_STATUS, {"request_id": request_id})
    ).scalar_one_or_none()
    return status


async def claim_event(
    session: AsyncSession, *, request_id: str, statuses: Collection[EventStatus]
) -> WebhookEvent | None:
    """Lock one event for applying, unless another worker holds it (then None); without its
    body and headers, which the caller parsed on receipt."""
    params = {"request_id": request_id, "statuses": [str(s) for s in statuses]}
    return (await session.execute(_CLAIM_EVENT, params)).scalar_one_or_none()


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


async def clear_bodies(session: AsyncSession, *, before: datetime, limit: int) -> int:
    """Null the raw body of events received before `before` (retention). Events still waiting
    to be applied keep theirs: it is all they have."""
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


async def count_parked(session: AsyncSession) -> int:
    """Events waiting for their transaction (the metrics scrape). Every PARKED event has a next
    attempt, so the `next_attempt_at` index keeps this to the rows in flight."""
    statement = select(func.count()).where(
        WebhookEvent.next_attempt_at.is_not(None), WebhookEvent.status == EventStatus.PARKED
    )
    return int((await session.execute(statement)).scalar_one())


async def lock_event(session: AsyncSession, event_pk: int) -> WebhookEvent | None:
    """One stored event with its body, locked (an operator's replay waits for a worker's)."""
    statement = (
        select(WebhookEvent)
        .where(WebhookEvent.id == event_pk)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def list_events(
    session: AsyncSession,
    *,
    limit: int,
    before_id: int | None,
    statuses: Collection[str] = (),
    request_id: str | None = None,
    needs_operator: bool | None = None,
) -> list[WebhookEvent]:
    """Stored events newest first, keyset-paginated on the id (a sequence: no two rows tie);
    without their bodies and headers."""
    statement = select(WebhookEvent).options(
        defer(WebhookEvent.body, raiseload=True), defer(WebhookEvent.headers, raiseload=True)
    )
    if statuses:
        statement = statement.where(WebhookEvent.status.in_(list(statuses)))
    if request_id is not None:
        statement = statement.where(WebhookEvent.request_id == request_id)
    if needs_operator is not None:
        statement = statement.where(WebhookEvent.needs_operator.is_(needs_operator))
    if before_id is not None:
        statement = statement.where(WebhookEvent.id < before_id)
    statement = statement.order_by(WebhookEvent.id.desc()).limit(limit)
    return list((await session.scalars(statement)).all())
