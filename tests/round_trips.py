"""Counting the round trips a request makes to Postgres, as the driver sends them.

Every statement is one (its prepared form is cached per connection after the first use, so a
test warms the path up first), and so is every BEGIN, COMMIT, ROLLBACK and SAVEPOINT that
reaches the server (a session in autocommit sends none). Statements sent on the asyncpg
connection directly (`app.db.driver_connection`), which SQLAlchemy's cursor never sees, are
counted too. The side engines of the app (the heartbeat's, which names itself) are left out, so
a test can count one request exactly.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg

# Connections of these names are not the request's (app.processes names its heartbeat engine).
_SIDE_ENGINES = ("fiat-onramp-heartbeat",)


# Sent by asyncpg on behalf of SQLAlchemy's adapter (its transactions), counted there already.
_TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def _counted_driver(connection: asyncpg.Connection) -> bool:
    settings = connection.get_settings()
    return getattr(settings, "application_name", "") not in _SIDE_ENGINES


def _counted(adapted: Any) -> bool:
    return _counted_driver(adapted._connection)


@dataclass
class RoundTrips:
    counting: bool = False
    seen: Counter[str] = field(default_factory=Counter)

    @contextlib.contextmanager
    def measure(self) -> Iterator[Counter[str]]:
        self.seen = Counter()
        self.counting = True
        try:
            yield self.seen
        finally:
            self.counting = False

    def note(self, what: str) -> None:
        if self.counting:
            self.seen[what] += 1


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    trips = RoundTrips()
    connection = sa_asyncpg.AsyncAdapt_asyncpg_connection
    cursor = sa_asyncpg.AsyncAdapt_asyncpg_cursor

    start, commit, rollback = (
        connection._start_transaction,
        connection.commit,
        connection.rollback,
    )
    prepare_and_execute, executemany = cursor._prepare_and_execute, cursor._executemany

    async def counting_start(self: Any) -> None:
        if self.isolation_level != "autocommit" and _counted(self):
            trips.note("BEGIN")
        await start(self)

    def counting_commit(self: Any) -> None:
        if self._transaction is not None and _counted(self):
            trips.note("COMMIT")
        commit(self)

    def counting_rollback(self: Any) -> None:
        if self._transaction is not None and _counted(self):
            trips.note("ROLLBACK")
        rollback(self)

    async def counting_execute(self: Any, operation: str, parameters: Any) -> None:
        if _counted(self._adapt_connection):
            trips.note(operation.split(None, 1)[0].upper())
        await prepare_and_execute(self, operation, parameters)

    async def counting_executemany(self: Any, operation: str, seq: Any) -> Any:
        if _counted(self._adapt_connection):
            trips.note(operation.split(None, 1)[0].upper())
        return await executemany(self, operation, seq)

    monkeypatch.setattr(connection, "_start_transaction", counting_start)
    monkeypatch.setattr(connection, "commit", counting_commit)
    monkeypatch.setattr(connection, "rollback", counting_rollback)
    monkeypatch.setattr(cursor, "_prepare_and_execute", counting_execute)
    monkeypatch.setattr(cursor, "_executemany", counting_executemany)

    driver = asyncpg.connection.Connection

    def count_driver(name: str) -> None:
        original = getattr(driver, name)

        async def counted(
            self: asyncpg.Connection, query: str, *args: object, **kw: object
        ) -> object:
            verb = query.split(None, 1)[0].upper().rstrip(";")
            if verb and verb not in _TRANSACTION_CONTROL and _counted_driver(self):
                trips.note(verb)
            return await original(self, query, *args, **kw)

        monkeypatch.setattr(driver, name, counted)

    for name in ("execute", "fetch", "fetchrow", "fetchval"):
        count_driver(name)
    return trips
