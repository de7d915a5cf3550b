"""Operator alerts: the one way any part of the service asks a person to look at something.

An alert is written in the caller's database transaction, so it exists exactly when the change it
is about was committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts import repository as repo
from app.alerts.models import OperatorAlert


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


class Resolution(StrEnum):
    RESOLVED = "resolved"
    ALREADY_RESOLVED = "already_resolved"
    NOT_FOUND = "not_found"


async def resolve_alert(
    session: AsyncSession, alert_id: int, *, by: str, note: str | None, now: datetime
) -> tuple[Resolution, OperatorAlert | None]:
    """An operator marks an alert dealt with, once; the caller commits."""
    alert = await repo.lock_alert(session, alert_id)
    if alert is None:
        return Resolution.NOT_FOUND, None
    if alert.resolved_at is not None:
        return Resolution.ALREADY_RESOLVED, alert
    alert.resolved_at = now
    alert.resolved_by = by
    alert.resolution_note = note
    return Resolution.RESOLVED, alert


async def resolve_open_alerts(
    session: AsyncSession, *, kind: str, subject: str, by: str, note: str, now: datetime
) -> int:
    """Resolve what an operator's action has dealt with (a released hold's alert)."""
    return await repo.resolve_open(session, kind=kind, subject=subject, by=by, note=note, now=now)
