"""Every SQL statement on operator alerts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, select
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
