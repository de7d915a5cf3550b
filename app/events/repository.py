"""Every SQL statement on `events`: the one table this package owns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CTE, Connection, FromClause, Table, bindparam, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.events.models import Event

EVENTS = cast(Table, Event.__table__)

# Built once: every commit that carries events sends this one statement.
_INSERT = insert(EVENTS)


def insert_events(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Write queued events in the caller's transaction: one statement, one round trip."""
    connection.execute(_INSERT, rows)


_EVENT_COLUMNS = ("id", "type", "version", "party_ref", "subject_id", "data")


def insert_event_cte(name: str, *, after: FromClause | None = None) -> CTE:
    """One event row as a CTE of another module's statement, so a change and its event are one
    round trip (issue 11). Its parameters are `event_params(row)`'s; with `after`, the row is
    written only when `after` yields one (the change it describes happened)."""
    row = select(*(bindparam(f"{name}_{c}", type_=EVENTS.c[c].type) for c in _EVENT_COLUMNS))
    if after is not None:
        row = row.select_from(after)
    return insert(EVENTS).from_select(_EVENT_COLUMNS, row).returning(EVENTS.c.local_id).cte(name)


def event_params(name: str, row: dict[str, Any]) -> dict[str, Any]:
    """The parameters of `insert_event_cte(name)` for a queued row (`service.take_queued`)."""
    return {f"{name}_{c}": row[c] for c in _EVENT_COLUMNS}


# Serializes numbering across every process on the database (any constant no other lock uses:
# "evntseq1").
SEQUENCER_LOCK_KEY = 7311152491513868593

_LOCK_SEQUENCER = text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=SEQUENCER_LOCK_KEY)

# Under the lock, in a statement whose snapshot is taken after the lock was granted: every row
# this sees as unnumbered belongs to a committed transaction, and every row numbered before has
# a smaller seq. A row whose transaction commits later is numbered by a later run, after these.
_NUMBER = text(
    """
    WITH base AS (SELECT coalesce(max(seq), 0) AS top FROM events),
    todo AS (
        SELECT local_id, row_number() OVER (ORDER BY local_id) AS n
        FROM events WHERE seq IS NULL ORDER BY local_id LIMIT :batch
    ),
    numbered AS (
        UPDATE events SET seq = base.top + todo.n FROM todo, base
        WHERE events.local_id = todo.local_id
        RETURNING events.seq
    )
    SELECT count(*) AS numbered, max(seq) AS top,
        CASE WHEN count(*) > 0 THEN pg_notify('events', max(seq)::text) END AS notified
    FROM numbered
    """
)


async def number_pending(session: AsyncSession, *, batch: int) -> tuple[int, int | None]:
    """Give the next `batch` committed, unnumbered events their public `seq`, in insertion
    order, and notify `events` with the highest; (how many, highest). The caller commits, which
    releases the lock and sends the notification."""
    await session.execute(_LOCK_SEQUENCER)
    row = (await session.execute(_NUMBER, {"batch": batch})).one()
    return int(row.numbered), row.top


# --- reading: only numbered rows, in seq order ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    id: str
    type: str
    version: int
    created_at: datetime
    party_ref: str
    data: dict[str, Any]


_PUBLIC = (
    EVENTS.c.seq,
    EVENTS.c.id,
    EVENTS.c.type,
    EVENTS.c.version,
    EVENTS.c.created_at,
    EVENTS.c.party_ref,
    EVENTS.c.data,
)
_PAGE = (
    select(*_PUBLIC)
    .where(EVENTS.c.seq > bindparam("after"))
    .order_by(EVENTS.c.seq)
    .limit(bindparam("limit"))
)
_PARTY_PAGE = (
    select(*_PUBLIC)
    .where(EVENTS.c.party_ref == bindparam("party_ref"), EVENTS.c.seq > bindparam("after"))
    .order_by(EVENTS.c.seq)
    .limit(bindparam("limit"))
)
_PARTIES_RANGE = (
    select(*_PUBLIC)
    .where(
        EVENTS.c.party_ref == func.any(bindparam("party_refs")),
        EVENTS.c.seq > bindparam("after"),
        EVENTS.c.seq <= bindparam("upto"),
    )
    .order_by(EVENTS.c.seq)
    .limit(bindparam("limit"))
)
_HEAD = select(func.coalesce(func.max(EVENTS.c.seq), 0))


async def page(
    session: AsyncSession, *, after: int, limit: int, party_ref: str | None = None
) -> list[StoredEvent]:
    """Up to `limit` numbered events after `after`, of one party or of all."""
    if party_ref is None:
        result = await session.execute(_PAGE, {"after": after, "limit": limit})
    else:
        result = await session.execute(
            _PARTY_PAGE, {"party_ref": party_ref, "after": after, "limit": limit}
        )
    return [StoredEvent(*row) for row in result]


async def parties_range(
    session: AsyncSession, *, party_refs: list[str], after: int, upto: int, limit: int
) -> list[StoredEvent]:
    """The numbered events in (after, upto] of any of `party_refs` (the stream hub's read)."""
    result = await session.execute(
        _PARTIES_RANGE,
        {"party_refs": party_refs, "after": after, "upto": upto, "limit": limit},
    )
    return [StoredEvent(*row) for row in result]


async def head(session: AsyncSession) -> int:
    """The highest seq given so far (0 before the first)."""
    return int((await session.execute(_HEAD)).scalar_one())


# Rows still waiting for their number: what readers cannot see yet (the partial index on
# local_id WHERE seq IS NULL keeps this cheap however long the table grows).
_UNNUMBERED = text(
    "SELECT count(*) AS waiting,"
    " coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0) AS oldest"
    " FROM events WHERE seq IS NULL"
)


async def unnumbered(session: AsyncSession) -> tuple[int, float]:
    """How many committed events wait for the sequencer, and the oldest one's age in seconds."""
    row = (await session.execute(_UNNUMBERED)).one()
    return int(row.waiting), float(row.oldest)
