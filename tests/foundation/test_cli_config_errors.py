"""Every misconfiguration, on every command, is one line on stderr naming the setting, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from app.config import Settings
from app.startup import ConfigError, check_database

WEAK_PRODUCTION = {
    "APP_ENV": "production",
    "DATABASE_URL": "postgresql://svc@127.0.0.1:1/fiat",
    "AUTH_JWT_SECRET": "a",
    "BAKKT_WEBHOOK_SECRETS": "whsec_YQ==",
    "BAKKT_CLIENT_SECRET": "x",
}


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without any setting of the service or the sandbox."""
    names = {name.upper() for name in Settings.model_fields}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in names and not key.startswith("SANDBOX_")
    }
    return {**env, **extra}


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd: an empty directory, so no .env of the checkout is read.
    return subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "-m", "app.cli", *args],
        env=_clean_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def missing_database_url(postgres_server_url: str) -> str:
    name = f"fiat_onramp_absent_{uuid.uuid4().hex[:8]}"
    return make_url(postgres_server_url).set(database=name).render_as_string(False)


@pytest.mark.parametrize(
    ("command", "env", "names"),
    [
        (
            ["serve", "--port", "1"],
            WEAK_PRODUCTION,
            ["AUTH_JWT_SECRET", "BAKKT_WEBHOOK_SECRETS", "BAKKT_CLIENT_SECRET"],
        ),
        (["worker"], WEAK_PRODUCTION, ["AUTH_JWT_SECRET"]),
        (["migrate"], WEAK_PRODUCTION, ["BAKKT_CLIENT_SECRET"]),
        (
            ["token", "--party", "alice"],
            {"BAKKT_WEBHOOK_SECRETS": "whsec_replace-with-a-base64-secret"},
            ["BAKKT_WEBHOOK_SECRETS"],
        ),
        (["dev", "--no-sandbox"], {"DB_POOL_SIZE": "ten"}, ["DB_POOL_SIZE"]),
        (["reconcile", "--since", "1h"], {"DATABASE_URL": "mysql://u@h/d"}, ["DATABASE_URL"]),
        (["serve"], {"FORWARDED_ALLOW_IPS": "proxy.internal"}, ["FORWARDED_ALLOW_IPS"]),
        (["migrate"], {}, ["DATABASE_URL"]),
        (["sandbox", "--port", "1"], {"SANDBOX_TIME_SCALE": "-1"}, ["SANDBOX_TIME_SCALE"]),
    ],
)
def test_configuration_error_is_one_line_naming_the_setting(
    tmp_path: Path, command: list[str], env: dict[str, str], names: list[str]
) -> None:
    line = _one_line(_run(command, env, tmp_path))
    assert line.startswith("fiat-onramp: configuration error: ")
    for name in names:
        assert name in line
    for secret in ("whsec_YQ==", "replace-with-a-base64-secret"):
        assert secret not in line


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["migrate"], ["worker"]])
def test_missing_database_is_one_line_saying_what_to_do(
    tmp_path: Path, missing_database_url: str, command: list[str]
) -> None:
    line = _one_line(_run(command, {"DATABASE_URL": missing_database_url}, tmp_path))
    database = make_url(missing_database_url).database
    assert f'DATABASE_URL: database "{database}" does not exist' in line
    assert "createdb" in line


def test_unreachable_database_stops_migrate_with_one_line(tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    line = _one_line(_run(["migrate"], {"DATABASE_URL": "postgresql://u@127.0.0.1:1/d"}, tmp_path))
    assert "DATABASE_URL: no Postgres answers on 127.0.0.1:1" in line


async def test_dev_creates_a_missing_database(
    postgres_server_url: str, missing_database_url: str
) -> None:
    database = make_url(missing_database_url).database
    admin_dsn = make_url(postgres_server_url).set(drivername="postgresql")
    try:
        with pytest.raises(ConfigError, match="does not exist"):
            await check_database(missing_database_url)
        created = await check_database(missing_database_url, create_missing=True)
        assert created is not None
        assert f'created database "{database}"' in created
        assert await check_database(missing_database_url) is None
    finally:
        admin = await asyncpg.connect(admin_dsn.render_as_string(False))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        finally:
            await admin.close()
