"""`fiat-onramp admin ...`: the same actions against the database directly, the same JSON as the
routes, the actor recorded as `cli:<name>`; exit 0 when done, 1 when refused, 2 for bad
arguments. The command line has its own engine, so these rows are committed (own party refs,
and only settled or closed rows, which no worker claims)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.admin import commands
from app.bakkt import BakktClient
from app.cli import build_parser
from app.config import Settings
from tests.admin.helpers import Execute, add_account, add_alert, add_transfer, history

ACTOR = "cli:night-shift"


async def _admin(
    capsys: pytest.CaptureFixture[str],
    settings: Settings,
    bakkt: BakktClient,
    *argv: str,
) -> tuple[int, Any, str]:
    args = build_parser().parse_args(["admin", "--actor", "night-shift", *argv])
    try:
        command = commands.parse(args)
    except commands.UsageError as exc:
        code = commands.usage(str(exc))
    else:
        code = await commands.run(command, settings, bakkt=bakkt)
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else None, err


async def test_list_show_and_release_a_held_transaction(
    capsys: pytest.CaptureFixture[str],
    admin_settings: Settings,
    bakkt: BakktClient,
    live_sql: Execute,
    party: str,
) -> None:
    row = await add_transfer(live_sql, party, status="COMPLETED")
    await live_sql("UPDATE transactions SET held_for_review = true WHERE id = :id", {"id": row.id})

    code, page, _ = await _admin(
        capsys, admin_settings, bakkt, "transactions", "--bucket", "held", "--party", party
    )
    assert code == 0
    assert [t["id"] for t in page["items"]] == [row.id]

    code, body, _ = await _admin(
        capsys, admin_settings, bakkt, "release", row.id, "--note", "checked"
    )
    assert code == 0
    assert body["transaction"]["heldForReview"] is False
    last = (await history(live_sql, "transaction_history", "transaction_id", row.id))[-1]
    assert (last["source"], last["actor"]) == ("admin", ACTOR)

    code, body, err = await _admin(capsys, admin_settings, bakkt, "release", row.id)
    assert (code, body) == (1, None)
    assert err.startswith("fiat-onramp admin: transaction_not_held: ")

    code, body, _ = await _admin(capsys, admin_settings, bakkt, "transaction", row.id)
    assert code == 0
    assert body["history"][-1]["actor"] == ACTOR


async def test_sync_a_transaction_bakkt_does_not_know(
    capsys: pytest.CaptureFixture[str],
    admin_settings: Settings,
    bakkt: BakktClient,
    live_sql: Execute,
    party: str,
) -> None:
    row = await add_transfer(live_sql, party, status="DECLINED")

    code, body, _ = await _admin(capsys, admin_settings, bakkt, "sync", row.id)

    assert code == 0
    assert body["outcome"] == "Bakkt has no record of it; now DECLINED"
    last = (await history(live_sql, "transaction_history", "transaction_id", row.id))[-1]
    assert (last["source"], last["actor"], last["applied"]) == ("admin", ACTOR, False)


async def test_disable_and_enable_a_bank_account(
    capsys: pytest.CaptureFixture[str],
    admin_settings: Settings,
    bakkt: BakktClient,
    live_sql: Execute,
    party: str,
) -> None:
    account = await add_account(live_sql, party)

    code, body, _ = await _admin(
        capsys, admin_settings, bakkt, "disable-account", account, "--reason", "stolen phone"
    )
    assert code == 0
    assert body["bankAccount"]["status"] == "DISABLED"
    code, body, _ = await _admin(capsys, admin_settings, bakkt, "enable-account", account)
    assert code == 0
    assert body["bankAccount"]["status"] == "LINKED"
    code, _, err = await _admin(capsys, admin_settings, bakkt, "enable-account", account)
    assert code == 1
    assert "bank_account_not_disabled_by_operator" in err

    code, body, _ = await _admin(capsys, admin_settings, bakkt, "account", account)
    assert [(h["to"], h["actor"]) for h in body["history"]] == [
        ("DISABLED", ACTOR),
        ("LINKED", ACTOR),
    ]
    # Leave nothing open behind for the pool-backed tests of other packages.
    await live_sql("UPDATE bank_accounts SET status = 'UNLINKED' WHERE id = :id", {"id": account})


async def test_list_and_resolve_alerts_and_list_events(
    capsys: pytest.CaptureFixture[str],
    admin_settings: Settings,
    bakkt: BakktClient,
    live_sql: Execute,
) -> None:
    kind = f"cli_test_{uuid.uuid4().hex[:8]}"
    alert = await add_alert(live_sql, kind, "transaction t-1")

    code, page, _ = await _admin(capsys, admin_settings, bakkt, "alerts", "--kind", kind)
    assert [a["id"] for a in page["items"]] == [alert]
    code, body, _ = await _admin(capsys, admin_settings, bakkt, "resolve", str(alert))
    assert (code, body["resolvedBy"]) == (0, ACTOR)
    code, page, _ = await _admin(capsys, admin_settings, bakkt, "alerts", "--kind", kind)
    assert page["items"] == []

    code, page, _ = await _admin(
        capsys, admin_settings, bakkt, "events", "--request-id", f"none-{uuid.uuid4()}"
    )
    assert (code, page["items"]) == (0, [])
    code, _, err = await _admin(capsys, admin_settings, bakkt, "replay", str(2**62))
    assert code == 1
    assert "webhook_event_not_found" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transactions", "--bucket", "late"], "bucket: Input should be"),
        (["transactions", "--limit", "0"], "limit: Input should be greater than or equal to 1"),
        (["sync", "not-a-uuid"], "'not-a-uuid' is not a UUID"),
        (["release", str(uuid.uuid4()), "--note", ""], "note: String should have at least"),
        (
            ["release", str(uuid.uuid4()), "--note", "bad \udcff"],
            "note: Input should be a valid string",
        ),
        (["disable-account", str(uuid.uuid4()), "--reason", "x" * 1001], "reason: String"),
        (["resolve", "0"], "0 is not a stored id"),
    ],
)
async def test_bad_arguments_exit_2_before_connecting(
    capsys: pytest.CaptureFixture[str],
    admin_settings: Settings,
    bakkt: BakktClient,
    argv: list[str],
    message: str,
) -> None:
    unreachable = admin_settings.model_copy(
        update={"database_url": "postgresql+asyncpg://nobody@127.0.0.1:1/none"}
    )
    code, _, err = await _admin(capsys, unreachable, bakkt, *argv)
    assert code == 2
    assert message in err


async def test_the_installed_command_runs_against_database_url(
    database_url: str, live_sql: Execute, party: str
) -> None:
    row = await add_transfer(live_sql, party, status="COMPLETED")
    exe = Path(sys.executable).with_name("fiat-onramp")
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}

    async def run(*argv: str) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            str(exe),
            "admin",
            "--actor",
            "pager",
            *argv,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out, err

    code, out, err = await run("transaction", row.id)
    assert code == 0, err
    assert json.loads(out)["id"] == row.id
    code, out, err = await run("release", row.id)
    assert (code, out) == (1, b"")
    assert b"transaction_not_held" in err
