"""Alembic environment: async engine, or a connection handed in by `app.migrate`.

Every online run holds a Postgres advisory lock for the whole upgrade, so two `fiat-onramp
migrate` processes (a Job retried while its first pod still runs, two deploys at once) queue
instead of racing: the second one reads the version table only after the first has committed,
finds the schema at head and does nothing.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings, normalize_database_url
from app.models import Base

config = context.config
target_metadata = Base.metadata

# Fixed and unique to this service, so it cannot collide with another application's advisory
# locks on a shared server: the first 8 bytes of sha256("fiat-onramp:migrations") as a signed
# bigint. Changing it lets an old and a new release migrate at the same time.
MIGRATION_LOCK_KEY = -0x6423_1ED0_5B20_4D58


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or Settings().database_url
    if not url:
        raise RuntimeError("DATABASE_URL is not set; nothing to migrate")
    return normalize_database_url(url)


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_in_callers_transaction(connection: Connection) -> None:
    """`app.migrate.upgrade_async`: the caller's open transaction holds the whole upgrade (Alembic
    does not commit an external transaction), so a transaction-level lock is held exactly as
    long, and a failure cannot leave it behind on a pooled connection."""
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    _configure_and_run(connection)


def _run_locked(connection: Connection) -> None:
    """`fiat-onramp migrate`: one transaction per migration, so the lock is session-level and
    released explicitly; the engine is disposed right after, which also releases it on error."""
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    # Alembic must start outside a transaction to commit each migration on its own.
    connection.commit()
    try:
        _configure_and_run(connection)
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()


async def _run_async() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_locked)
    finally:
        await engine.dispose()


def run_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, compare_type=True
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (connection := config.attributes.get("connection")) is not None:
    _run_in_callers_transaction(connection)
else:
    asyncio.run(_run_async())
