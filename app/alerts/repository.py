"""Every SQL statement on operator alerts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.models import OperatorAlert

SUBJECT_LENGTH = 255


def add(
    session: AsyncSession, *, kind: str, subject: str, detail: str, data: dict[str, Any]
) -> None:
    session.add(
        OperatorAlert(kind=kind, subject=subject[:SUBJECT_LENGTH], detail=detail, data=data)
    )


async def open_exists(session: AsyncSession, *, kind: str, subject: str) -> bool:
    statement = select(
        exists().where(
            OperatorAlert.kind == kind,
            OperatorAlert.subject == subject[:SUBJECT_LENGTH],
            OperatorAlert.resolved_at.is_(None),
        )
    )
    return bool((await session.execute(statement)).scalar_one())


async def list_alerts(
    session: AsyncSession,
    *,
    limit: int,
    before_id: int | None,
    open_only: bool,
    kind: str | None = None,
) -> list[OperatorAlert]:
    """Newest first, keyset-paginated on the id (a sequence: no two rows tie)."""
    statement = select(OperatorAlert)
    if open_only:
        # Spelled as the partial index's predicate.
        statement = statement.where(text("operator_alerts.resolved_at IS NULL"))
    if kind is not None:
        statement = statement.where(OperatorAlert.kind == kind)
    if before_id is not None:
        statement = statement.where(OperatorAlert.id < before_id)
    statement = statement.order_by(OperatorAlert.id.desc()).limit(limit)
    return list((await session.scalars(statement)).all())


async def lock_alert(session: AsyncSession, alert_id: int) -> OperatorAlert | None:
    statement = (
        select(OperatorAlert)
        .where(OperatorAlert.id == alert_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(statement)).one_or_none()


async def resolve_open(
    session: AsyncSession, *, kind: str, subject: str, by: str, note: str, now: datetime
) -> int:
    """Resolve the open alerts of `kind` about `subject`; how many."""
    statement = (
        update(OperatorAlert)
        .where(
            OperatorAlert.kind == kind,
            OperatorAlert.subject == subject[:SUBJECT_LENGTH],
            OperatorAlert.resolved_at.is_(None),
        )
        .values(resolved_at=now, resolved_by=by, resolution_note=note)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


async def count_open(session: AsyncSession, kinds: Sequence[str]) -> dict[str, int]:
    """Unresolved alerts of these kinds, by kind (the metrics scrape)."""
    statement = (
        select(OperatorAlert.kind, func.count())
        .where(OperatorAlert.kind.in_(kinds), text("operator_alerts.resolved_at IS NULL"))
        .group_by(OperatorAlert.kind)
    )
    return {kind: int(n) for kind, n in (await session.execute(statement)).all()}
