"""Every SQL statement on `events`: the one table this package owns."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Connection, Table, insert

from app.events.models import Event

EVENTS = cast(Table, Event.__table__)

# Built once: every commit that carries events sends this one statement.
_INSERT = insert(EVENTS)


def insert_events(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Write queued events in the caller's transaction: one statement, one round trip."""
    connection.execute(_INSERT, rows)
