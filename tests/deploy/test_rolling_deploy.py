"""What a rolling deploy relies on: migrations serialised by an advisory lock, and readiness that
accepts a schema a later release has already migrated."""

from __future__ import annotations

import ast
import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app import migrate
from app.config import Settings
from app.main import create_app
from tests.conftest import REPO_ROOT, _asyncpg_dsn

HEAD = migrate.head_revision()


def _lock_key() -> int:
    """The key migrations/env.py locks on (env.py runs Alembic when imported, so it is read)."""
    tree = ast.parse((REPO_ROOT / "migrations" / "env.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "MIGRATION_LOCK_KEY"
            for target in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, int)
            return value
    raise AssertionError("migrations/env.py defines no MIGRATION_LOCK_KEY")


@pytest.fixture
async def fresh_database(postgres_server_url: str) -> AsyncIterator[str]:
    """An empty database of its own (SQLAlchemy URL), dropped afterwards."""
    name = f"fiat_onramp_deploy_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_server_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_server_url).set(database=name).render_as_string(False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _waiting_for_lock(conn: asyncpg.Connection, key: int) -> int:
    # pg_locks splits a bigint advisory key into its high (classid) and low (objid) halves.
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND classid = $1 AND objid = $2 AND database = (SELECT oid FROM pg_database"
        " WHERE datname = current_database())",
        unsigned >> 32,
        unsigned & 0xFFFF_FFFF,
    )
    assert isinstance(count, int)
    return count


async def test_two_concurrent_migrate_processes_both_succeed_and_upgrade_once(
    fresh_database: str,
) -> None:
    key = _lock_key()
    dsn = _asyncpg_dsn(fresh_database)
    holder = await asyncpg.connect(dsn)
    # Held by the test until both processes wait on it, so they are sure to contend.
    await holder.execute("SELECT pg_advisory_lock($1)", key)
    env = {**os.environ, "DATABASE_URL": dsn, "APP_ENV": "development"}
    command = [str(Path(sys.executable).parent / "fiat-onramp"), "migrate"]
    processes = [
        await asyncio.create_subprocess_exec(
            *command,
            cwd=REPO_ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    try:
        async with asyncio.timeout(120):
            while await _waiting_for_lock(holder, key) < 2:
                exited = [p for p in processes if p.returncode is not None]
                assert not exited, "a migrate process exited before taking the lock"
                await asyncio.sleep(0.05)
        assert not await holder.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        await holder.execute("SELECT pg_advisory_unlock($1)", key)
        async with asyncio.timeout(120):
            outputs = [(await p.communicate())[0].decode() for p in processes]
    finally:
        for p in processes:
            if p.returncode is None:
                p.kill()
                await p.wait()
        await holder.close()

    assert [p.returncode for p in processes] == [0, 0], outputs
    log = "\n".join(outputs)
    assert log.count("Running upgrade  -> 0001") == 1, log
    assert log.count(f"-> {HEAD},") == 1, log
    check = await asyncpg.connect(dsn)
    try:
        assert await check.fetch("SELECT version_num FROM alembic_version") == [(HEAD,)]
    finally:
        await check.close()


async def _readyz(database_url: str) -> httpx.Response:
    settings = Settings(_env_file=None, database_url=database_url, workers_enabled=False)  # type: ignore[call-arg]
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.get("/readyz")


async def _migrated_to(database_url: str, revision: str) -> AsyncEngine:
    engine = create_async_engine(database_url)
    await migrate.upgrade_async(engine, revision)
    return engine


async def _set_revision(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE alembic_version SET version_num = :r"), {"r": revision}
        )


async def test_readyz_is_ready_at_this_builds_head(fresh_database: str) -> None:
    engine = await _migrated_to(fresh_database, "head")
    await engine.dispose()
    response = await _readyz(fresh_database)
    assert response.status_code == 200
    assert response.json()["checks"]["migrations"] == {"ok": True, "revision": HEAD}


async def test_readyz_is_not_ready_behind_head_and_names_the_revision(fresh_database: str) -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert HEAD is not None
    previous = script.get_revision(HEAD).down_revision
    assert isinstance(previous, str)
    engine = await _migrated_to(fresh_database, previous)
    await engine.dispose()
    response = await _readyz(fresh_database)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["migrations"] == {
        "ok": False,
        "revision": previous,
        "expected": HEAD,
        "detail": "run `fiat-onramp migrate`",
    }


async def test_readyz_is_ready_at_a_later_releases_unknown_revision(fresh_database: str) -> None:
    assert HEAD is not None
    later = f"{int(HEAD) + 1:04d}_from_a_later_release"
    engine = await _migrated_to(fresh_database, "head")
    try:
        await _set_revision(engine, later)
    finally:
        await engine.dispose()
    response = await _readyz(fresh_database)
    assert response.status_code == 200
    assert response.json()["checks"]["migrations"] == {
        "ok": True,
        "revision": later,
        "expected": HEAD,
    }


async def test_readyz_is_not_ready_at_an_unknown_revision_that_is_not_later(
    fresh_database: str,
) -> None:
    engine = await _migrated_to(fresh_database, "head")
    try:
        await _set_revision(engine, "0002_from_another_branch")
    finally:
        await engine.dispose()
    response = await _readyz(fresh_database)
    assert response.status_code == 503
    migrations = response.json()["checks"]["migrations"]
    assert migrations["ok"] is False
    assert migrations["revision"] == "0002_from_another_branch"
    assert "unknown revision" in migrations["detail"]


def test_revisions_are_linear_and_numbered_upwards() -> None:
    """Readiness tells a later release's revision by its number, so every revision id starts with
    a number higher than its parent's, and there is one head."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(script.get_heads()) == 1
    for revision in script.walk_revisions():
        number = int(revision.revision.split("_", 1)[0])
        down = revision.down_revision
        assert down is None or isinstance(down, str), f"{revision.revision} is a merge"
        if down is not None:
            assert number > int(down.split("_", 1)[0]), revision.revision
