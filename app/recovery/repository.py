"""Every SQL statement on `recovery_jobs`: the scheduled jobs' run records. The jobs' SQL on
transactions is funding's (`app.funding.repository`), on idempotency keys and webhook events
their own domains'."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.recovery.models import RecoveryJob

# --- scheduled jobs -----------------------------------------------------------------------------


async def lock_job(session: AsyncSession, name: str) -> RecoveryJob | None:
    """The job's row, created on first use and locked; None while another replica holds it."""
    await session.execute(
        insert(RecoveryJob).values(name=name).on_conflict_do_nothing(index_elements=["name"])
    )
    statement = (
        select(RecoveryJob)
        .where(RecoveryJob.name == name)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(statement)).one_or_none()


async def finish_job(
    session: AsyncSession,
    name: str,
    *,
    started_at: datetime,
    succeeded: bool,
    summary: dict[str, Any] | None,
    error: str | None,
) -> None:
    values: dict[str, Any] = {
        "running_until": None,
        "last_finished_at": func.clock_timestamp(),
        "last_summary": summary,
        "last_error": error,
    }
    if succeeded:
        values["last_success_started_at"] = started_at
    statement = (
        update(RecoveryJob)
        # Only the run that started then: a run that outlived its lease and was retaken by
        # another replica must not overwrite the newer run's record.
        .where(RecoveryJob.name == name, RecoveryJob.last_started_at == started_at)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    await session.execute(statement)
