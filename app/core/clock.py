"""The two clocks: the process's (UTC, aware) and the database's, which every replica shares."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

_DB_NOW = select(func.clock_timestamp())


def utcnow() -> datetime:
    return datetime.now(UTC)


async def db_now(session: AsyncSession) -> datetime:
    """The database's clock now (not the transaction's start, which `now()` would give): leases
    and schedules are judged by it, so replicas with drifting clocks agree."""
    now: datetime = (await session.execute(_DB_NOW)).scalar_one()
    return now
