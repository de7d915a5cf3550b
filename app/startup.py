"""Checks the command line makes before it starts anything, each failing with one line that names
the setting to fix."""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import URL, make_url

CONNECT_TIMEOUT_SECONDS = 5.0


class ConfigError(Exception):
    """A misconfiguration a person must fix; its message is the one line the command prints."""


class DatabaseUnreachable(ConfigError):
    """No answer from the server: maybe a misconfiguration, maybe a database still starting."""


def _libpq_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _where(url: URL) -> str:
    host = url.host or url.query.get("host") or "the local socket"
    return f"{host}:{url.port or 5432}" if url.host else str(host)


async def check_database(database_url: str, *, create_missing: bool = False) -> str | None:
    """Connect once to DATABASE_URL. A missing database is created when `create_missing` (the
    `dev` command); the return value then says so."""
    url = make_url(database_url)
    where = _where(url)
    try:
        connection = await asyncpg.connect(_libpq_dsn(url), timeout=CONNECT_TIMEOUT_SECONDS)
    except asyncpg.InvalidCatalogNameError:
        if not create_missing:
            raise ConfigError(
                f'DATABASE_URL: database "{url.database}" does not exist on {where}. Create it '
                f"(createdb -h {url.host or 'localhost'} -p {url.port or 5432} "
                f"-U {url.username or 'postgres'} {url.database}) and run `fiat-onramp migrate`, "
                "or unset DATABASE_URL and use `fiat-onramp dev` (embedded Postgres)."
            ) from None
        await _create_database(url, where)
        return f'created database "{url.database}" on {where}'
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise ConfigError(
            f'DATABASE_URL: Postgres on {where} refused user "{url.username}": {exc}'
        ) from None
    except (OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DatabaseUnreachable(
            f"DATABASE_URL: no Postgres answers on {where} ({reason})"
        ) from None
    except asyncpg.PostgresError as exc:
        raise ConfigError(
            f"DATABASE_URL: Postgres on {where} refused the connection: {exc}"
        ) from None
    await connection.close()
    return None


async def _create_database(url: URL, where: str) -> None:
    # CREATE DATABASE must be sent from another database of the same server.
    maintenance = url.set(database="postgres")
    try:
        admin = await asyncpg.connect(_libpq_dsn(maintenance), timeout=CONNECT_TIMEOUT_SECONDS)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConfigError(
            f'DATABASE_URL: database "{url.database}" does not exist on {where} and cannot be '
            f"created from its `postgres` database ({exc}); create it yourself."
        ) from None
    try:
        name = str(url.database).replace('"', '""')
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        pass  # another process created it between the two connections
    except asyncpg.PostgresError as exc:
        raise ConfigError(
            f'DATABASE_URL: database "{url.database}" does not exist on {where} and user '
            f'"{url.username}" cannot create it ({exc}); create it yourself.'
        ) from None
    finally:
        await admin.close()
