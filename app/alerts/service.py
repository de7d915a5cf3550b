"""Operator alerts: the one way any part of the service asks a person to look at something.

An alert is written in the caller's database transaction, so it exists exactly when the change it
is about was committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts import repository as repo


@dataclass(frozen=True, slots=True)
class AlertSpec:
    """An alert to raise: what kind, about what, and the facts an operator needs."""

    kind: str
    subject: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def add_alert(session: AsyncSession, alert: AlertSpec) -> None:
    repo.add(session, kind=alert.kind, subject=alert.subject, detail=alert.detail, data=alert.data)


async def add_alert_once(session: AsyncSession, alert: AlertSpec) -> bool:
    """Add `alert` unless an unresolved one of its kind about its subject exists; True when
    added. Callers hold the row lock of what the alert is about, so two workers cannot both
    add it."""
    if await repo.open_exists(session, kind=alert.kind, subject=alert.subject):
        return False
    add_alert(session, alert)
    return True
