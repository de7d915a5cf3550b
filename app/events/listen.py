"""LISTEN on one Postgres channel over a connection of its own (never one of the pool's, which
would be held forever), reconnected when it drops."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import URL, make_url

log = logging.getLogger("app.events")


def asyncpg_dsn(url: URL | str) -> str:
    """The plain `postgresql://` DSN asyncpg takes, from SQLAlchemy's URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """Calls `on_notify(payload)` for each notification on `channel`. `ensure()` (re)connects;
    it returns True when it has just done so, because notifications sent while no connection
    listened are lost: the caller then looks for itself once."""

    def __init__(
        self, url: URL | str, channel: str, on_notify: Callable[[str], None], *, timeout: float
    ) -> None:
        self._dsn = asyncpg_dsn(url)
        self._channel = channel
        self._on_notify = on_notify
        self._timeout = timeout
        self._connection: asyncpg.Connection | None = None
        self._failing = False

    @property
    def listening(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    def _deliver(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._on_notify(payload)

    async def ensure(self) -> bool:
        if self.listening:
            return False
        await self.close()
        try:
            connection = await asyncpg.connect(
                self._dsn,
                timeout=self._timeout,
                server_settings={"application_name": f"fiat-onramp-listen-{self._channel}"},
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            if not self._failing:
                log.warning(
                    "LISTEN %s: cannot connect (%s); polling until it can",
                    self._channel,
                    type(exc).__name__,
                )
            self._failing = True
            return False
        try:
            await connection.add_listener(self._channel, self._deliver)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close(timeout=self._timeout)
            raise
        self._connection = connection
        if self._failing:
            log.warning("LISTEN %s: connected again", self._channel)
        self._failing = False
        return True

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None or connection.is_closed():
            return
        with contextlib.suppress(Exception):
            await connection.close(timeout=self._timeout)
