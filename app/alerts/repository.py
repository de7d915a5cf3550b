"""Every SQL statement on operator alerts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, func, select
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


async def count_open(session: AsyncSession, kinds: Sequence[str]) -> dict[str, int]:
    """Unresolved alerts of these kinds, by kind (the metrics scrape)."""
    statement = (
        select(OperatorAlert.kind, func.count())
        .where(OperatorAlert.kind.in_(kinds), OperatorAlert.resolved_at.is_(None))
        .group_by(OperatorAlert.kind)
    )
    return {kind: int(n) for kind, n in (await session.execute(statement)).all()}
