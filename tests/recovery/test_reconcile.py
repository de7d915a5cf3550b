"""Windowed reconciliation: what Bakkt lists is what we end up holding, and every disagreement is
counted as drift."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.dev_token import mint_dev_token
from app.bakkt import BakktClient, TransferDirection, TransferMethod, TransferRequest
from app.config import Settings
from app.core.metrics import Metrics
from app.main import create_app
from app.recovery.reconcile import reconcile, run_scheduled_reconcile
from bakkt_sandbox.testing import RunningSandbox
from tests.recovery.conftest import Isolate
from tests.recovery.helpers import (
    Execute,
    add_transfer,
    alerts_about,
    counter_by_label,
    db_now,
    history_of,
    link_at_bakkt,
    row_of,
)

Factory = async_sessionmaker[AsyncSession]
OURS = {"COMPLETE": "COMPLETED"}
REPO_ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def serving(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The service on 127.0.0.1 and an ephemeral port, so the sandbox can POST its webhooks."""
    app = create_app(settings, engine=engine)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield http
    finally:
        server.should_exit = True
        await task


async def test_reconciliation_after_lost_webhooks_restores_every_final_state(
    engine: AsyncEngine,
    live_factory: Factory,
    live_sql: Execute,
    rsettings: Settings,
    sandbox: RunningSandbox,
    bakkt: BakktClient,
    party: str,
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    token = mint_dev_token(rsettings, party, ttl_seconds=600)

    def headers() -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Idempotency-Key": f"k-{uuid.uuid4()}"}

    async with serving(rsettings, engine) as http:
        await sandbox.set_webhook_mode(
            url=str(http.base_url.join("/webhooks/bakkt")), drop_rate=0.0
        )
        linked = await http.post(
            f"/v1/parties/{party}/bank-accounts",
            json={"processorToken": f"processor-sandbox-{uuid.uuid4().hex}"},
            headers=headers(),
        )
        assert linked.status_code == 202, linked.text
        assert await sandbox.drain_webhooks(5.0) == 0
        await sandbox.credit(party, "500.00")

        ids: dict[str, str] = {}
        for name, amount in [
            ("settled", "25.00"),
            ("declined", "26.00"),
            ("cancelled", "27.00"),
            ("returned", "28.00"),
            ("returned_after_completion", "29.00"),
            ("still_pending", "30.00"),
        ]:
            made = await http.post(
                f"/v1/parties/{party}/deposits", json={"amount": amount}, headers=headers()
            )
            assert made.status_code == 202, made.text
            ids[name] = made.json()["id"]
        paid = await http.post(
            f"/v1/parties/{party}/withdrawals",
            json={"method": "ACH", "amount": "40.00"},
            headers=headers(),
        )
        assert paid.status_code == 202, paid.text
        ids["withdrawn"] = paid.json()["id"]
        assert await sandbox.drain_webhooks(5.0) == 0
        refs = {
            name: (await live_sql("SELECT bakkt_ref FROM transactions WHERE id = :id", {"id": i}))[
                0
            ][0]
            for name, i in ids.items()
        }

        # From here on every webhook is lost.
        await sandbox.set_webhook_mode(drop_rate=1.0)
        await sandbox.settle(refs["settled"])
        await sandbox.decline(refs["declined"], reason_code="RISK_DECLINED")
        await sandbox.cancel(refs["cancelled"])
        await sandbox.return_transfer(refs["returned"], reason_code="R01")
        await sandbox.settle(refs["returned_after_completion"])
        await sandbox.return_transfer(
            refs["returned_after_completion"], reason_code="R02", fee="15"
        )
        await sandbox.settle(refs["withdrawn"])
        wire = await sandbox.inbound_wire("100.00", party)
        await sandbox.settle(wire["partnerTransactionRef"])
        assert await sandbox.drain_webhooks(5.0) == 0
        dropped = await sandbox.webhooks(party_ref=party, state="dropped")
        assert len(dropped) >= 9
        statuses = await live_sql(
            "SELECT DISTINCT status FROM transactions WHERE party_ref = :p", {"p": party}
        )
        assert {s[0] for s in statuses} == {"PENDING"}

        metrics = Metrics()
        summary = await reconcile(
            live_factory, bakkt, since=since, parties=[party], metrics=metrics
        )

        at_bakkt = await sandbox.transactions(party)
        assert len(at_bakkt) == 9
        for t in at_bakkt:
            ours = await live_sql(
                "SELECT status, amount_cents, reason_code FROM transactions WHERE bakkt_ref = :r",
                {"r": t["partnerTransactionRef"]},
            )
            assert len(ours) == 1, t
            status, cents, reason = ours[0]
            assert status == OURS.get(t["transactionStatus"], t["transactionStatus"]), t
            assert cents == int(Decimal(str(t["amount"])) * 100)
            if t["transactionStatus"] == "RETURNED":
                assert reason == t["reasonCode"]

        fee = await live_sql(
            "SELECT t.status, t.amount_cents, r.bakkt_ref FROM transactions t "
            "JOIN transactions r ON r.id = t.related_transaction_id "
            "WHERE t.party_ref = :p AND t.type = 'RETURN_FEE'",
            {"p": party},
        )
        assert [tuple(f) for f in fee] == [("COMPLETED", 1500, refs["returned_after_completion"])]
        # R02 (account closed) seen only through reconciliation still disables the account.
        account = await live_sql(
            "SELECT status, reason_code FROM bank_accounts WHERE party_ref = :p", {"p": party}
        )
        assert [tuple(a) for a in account] == [("DISABLED", "R02")]

        assert summary.parties_scanned == 1
        assert summary.transactions_seen == 9
        assert summary.drift == {"status": 6, "missing": 2}
        assert (summary.moved, summary.created) == (6, 2)
        assert counter_by_label(metrics, "recovery_drift_total", "kind") == {
            "status": 6,
            "missing": 2,
        }

        # What the consumer sees through the API.
        listed = await http.get(
            f"/v1/parties/{party}/transactions",
            params={"limit": 50},
            headers={"Authorization": f"Bearer {token}"},
        )
        by_id = {t["id"]: t["status"] for t in listed.json()["items"]}
        assert by_id[ids["settled"]] == "COMPLETED"
        assert by_id[ids["returned_after_completion"]] == "RETURNED"
        assert by_id[ids["still_pending"]] == "PENDING"

        again = await reconcile(live_factory, bakkt, since=since, parties=[party], metrics=metrics)
        assert again.drift == {}
        assert (again.moved, again.created) == (0, 0)


async def test_status_drift_is_logged_naming_the_transaction(
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    sandbox: RunningSandbox,
    party: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await link_at_bakkt(bakkt, party)
    row = await add_transfer(sql, party, status="PENDING")
    await bakkt.transfer(row.request())
    await sandbox.settle(row.ref)
    since = await db_now(sql) - timedelta(hours=1)

    with caplog.at_level(logging.WARNING, logger="app.recovery"):
        summary = await reconcile(factory, bakkt, since=since, parties=[party])

    assert summary.drift == {"status": 1}
    assert (await row_of(sql, row.id))["status"] == "COMPLETED"
    drift_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("drift")]
    assert len(drift_lines) == 1
    assert row.ref in drift_lines[0]
    assert (await history_of(sql, row.id))[-1] == ("PENDING", "COMPLETED", "sync", True)


async def test_disagreements_reconciliation_cannot_repair_go_to_an_operator(
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    party: str,
) -> None:
    await link_at_bakkt(bakkt, party)
    # Ours says FAILED, Bakkt has it: the state machine forbids the move.
    failed = await add_transfer(sql, party, status="FAILED")
    await bakkt.transfer(failed.request())
    # Same ref, different amount.
    differs = await add_transfer(sql, party, status="PENDING", cents=2600)
    await bakkt.transfer(
        TransferRequest(
            party,
            differs.ref,
            differs.key,
            TransferDirection.DEPOSIT,
            TransferMethod.ACH,
            Decimal("26.50"),
        )
    )
    # "Ours" at Bakkt, never stored here.
    stranger = f"stranger-{uuid.uuid4()}"
    await bakkt.transfer(
        TransferRequest(
            party,
            stranger,
            str(uuid.uuid4()),
            TransferDirection.DEPOSIT,
            TransferMethod.ACH,
            Decimal("10.00"),
        )
    )
    since = await db_now(sql) - timedelta(hours=1)

    summary = await reconcile(factory, bakkt, since=since, parties=[party])

    assert summary.drift == {"conflict": 1, "mismatch": 1, "unknown_ref": 1}
    assert (summary.moved, summary.created, summary.flagged) == (0, 0, 3)
    assert (await row_of(sql, failed.id))["status"] == "FAILED"
    assert (await history_of(sql, failed.id))[-1] == ("FAILED", "PENDING", "sync", False)
    assert await alerts_about(sql, "transaction_status_conflict", failed.id) == 1
    held = await row_of(sql, differs.id)
    assert (held["status"], held["held_for_review"]) == ("PENDING", True)
    assert await alerts_about(sql, "transaction_held_for_review", differs.id) == 1
    unknown = await sql(
        "SELECT count(*) FROM operator_alerts WHERE kind = 'reconcile_unknown_transaction' "
        "AND subject = :s",
        {"s": f"bakkt transaction {stranger}"},
    )
    assert unknown[0][0] == 1
    assert await sql("SELECT 1 FROM transactions WHERE bakkt_ref = :r", {"r": stranger}) == []


async def test_scheduled_reconciliation_runs_once_per_interval_from_the_last_success(
    sql: Execute,
    factory: Factory,
    bakkt: BakktClient,
    rsettings: Settings,
    sandbox: RunningSandbox,
    party: str,
    isolate: Isolate,
) -> None:
    await link_at_bakkt(bakkt, party)
    row = await add_transfer(sql, party, status="PENDING")
    await bakkt.transfer(row.request())
    await sandbox.settle(row.ref)
    await isolate(party)
    start = await db_now(sql)
    day = timedelta(hours=rsettings.reconcile_interval_hours)
    overlap = timedelta(minutes=rsettings.reconcile_overlap_minutes)

    first = await run_scheduled_reconcile(factory, bakkt, rsettings, now=start)
    assert first is not None
    assert first.since == start - timedelta(hours=rsettings.reconcile_initial_lookback_hours)
    assert first.parties_scanned == 1
    assert first.moved == 1
    assert (await row_of(sql, row.id))["status"] == "COMPLETED"

    assert await run_scheduled_reconcile(factory, bakkt, rsettings, now=start + day / 2) is None

    second = await run_scheduled_reconcile(factory, bakkt, rsettings, now=start + day)
    assert second is not None
    assert second.since == start - overlap
    assert second.drift == {}

    # Bakkt cannot list: the run fails, is retried within minutes, and its window still starts
    # at the last successful run.
    await sandbox.set_fault("getTransactions", "error", status=503)
    failed = await run_scheduled_reconcile(factory, bakkt, rsettings, now=start + 2 * day)
    assert failed is not None
    assert not failed.ok
    await sandbox.clear_faults()
    soon = start + 2 * day + timedelta(minutes=5)
    assert await run_scheduled_reconcile(factory, bakkt, rsettings, now=soon) is None
    later = start + 2 * day + timedelta(minutes=16)
    retried = await run_scheduled_reconcile(factory, bakkt, rsettings, now=later)
    assert retried is not None
    assert retried.ok
    assert retried.since == start + day - overlap
    job = await sql("SELECT last_summary, last_error FROM recovery_jobs WHERE name = 'reconcile'")
    assert job[0][0]["parties_scanned"] == 1
    assert job[0][1] is None


async def test_reconcile_command_prints_its_summary(
    database_url: str,
    live_sql: Execute,
    bakkt: BakktClient,
    sandbox: RunningSandbox,
    party: str,
    tmp_path: Path,
) -> None:
    await link_at_bakkt(bakkt, party)
    row = await add_transfer(live_sql, party, status="PENDING")
    await bakkt.transfer(row.request())
    await sandbox.settle(row.ref)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BAKKT_BASE_URL": sandbox.base_url,
        "FIAT_ONRAMP_MIGRATIONS": str(REPO_ROOT / "migrations"),
    }
    # A subprocess of its own while this loop keeps serving the sandbox.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "reconcile",
        "--since",
        "2h",
        "--party",
        party,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()

    assert proc.returncode == 0, err.decode()
    printed = out.decode()
    assert "parties scanned     1" in printed
    assert "transactions seen   1" in printed
    assert "drift               1 (status 1)" in printed
    assert "moved               1" in printed
    assert (await row_of(live_sql, row.id))["status"] == "COMPLETED"
