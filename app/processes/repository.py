"""Every SQL statement on `service_processes`, and the one expression that says a holder is gone
(used by the idempotency claims, which name their holder)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, exists, func, literal, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.processes.models import ServiceProcess

# A clean shutdown leaves its row this far in the past, so its claims are stale at once.
_STOPPED = datetime(1970, 1, 1, tzinfo=UTC)


def holder_gone(
    holder_id: InstrumentedAttribute[uuid.UUID | None] | ColumnElement[uuid.UUID | None],
    stale_after: timedelta | ColumnElement[timedelta],
) -> ColumnElement[bool]:
    """True when the named holder's row exists and its heartbeat is older than `stale_after`
    (a value, or a bound parameter of a statement built once).

    A holder with no row is not judged gone: it may be a process whose first heartbeat has not
    reached the database yet (it registers without blocking its start), or one whose row
    retention deleted long after its lease ran out; the lease alone decides for those.
    """
    after = literal(stale_after) if isinstance(stale_after, timedelta) else stale_after
    return exists().where(
        and_(
            ServiceProcess.id == holder_id,
            ServiceProcess.heartbeat_at < func.clock_timestamp() - after,
        )
    )


async def beat(
    session: AsyncSession, process_id: uuid.UUID, *, kind: str, hostname: str, pid: int
) -> None:
    """Register the process, or renew its heartbeat: one statement either way."""
    stmt = (
        insert(ServiceProcess)
        .values(
            id=process_id,
            kind=kind,
            hostname=hostname,
            pid=pid,
            started_at=func.clock_timestamp(),
            heartbeat_at=func.clock_timestamp(),
        )
        .on_conflict_do_update(
            index_elements=[ServiceProcess.id],
            set_={"heartbeat_at": func.clock_timestamp()},
        )
    )
    await session.execute(stmt)


async def mark_stopped(session: AsyncSession, process_id: uuid.UUID) -> None:
    await session.execute(
        update(ServiceProcess).where(ServiceProcess.id == process_id).values(heartbeat_at=_STOPPED)
    )


async def delete_gone(session: AsyncSession, *, before: datetime) -> int:
    """Forget processes silent since `before` (retention)."""
    result = await session.execute(
        delete(ServiceProcess).where(ServiceProcess.heartbeat_at < before)
    )
    return int(getattr(result, "rowcount", 0) or 0)
