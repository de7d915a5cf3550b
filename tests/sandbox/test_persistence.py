"""The sandbox's state across restarts: a snapshot written atomically, read back whole."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import build_parser, reset_dev_state
from app.config import Settings
from bakkt_sandbox.config import SandboxSettings
from bakkt_sandbox.persistence import STATE_FILE, SnapshotError
from bakkt_sandbox.server import SandboxServer
from bakkt_sandbox.testing import RunningSandbox
from tests.sandbox.conftest import Partner, http_client

ACH = {"routingNumber": "021000021", "accountType": "CHECKING"}


def settings_for(state_dir: Path, **extra: Any) -> SandboxSettings:
    return SandboxSettings(**{"time_scale": 0, "webhook_url": "", "state_dir": state_dir, **extra})


async def build_world(partner: Partner, sb: RunningSandbox) -> None:
    """Parties, accounts (one replaced), transfers in three states, a status and a clock."""
    await partner.link("p-plaid")
    for number, ref in (("11112222", "first"), ("33334444", "second")):
        body = {**ACH, "accountNumber": number, "partnerTransactionRef": ref}
        assert (await partner.post("p-ach", "/bankAccountLinking/ach", body)).status_code == 200
    assert (await partner.transfer("p-plaid", 100, ref="done", key="k-done")).status_code == 200
    await sb.advance_clock(3.5)
    assert (await partner.transfer("p-plaid", 40, ref="pending", key="k-pend")).status_code == 200
    assert (await partner.transfer("p-ach", 25.01, ref="declined")).status_code == 200
    await sb.set_party_status(
        "p-doc",
        reason_code="DOCUMENT_VERIFICATION",
        verification_url="https://verify.example.test/1",
        verification_url_expiry="2099-01-01T00:00:00Z",
    )


async def observe(partner: Partner, sb: RunningSandbox) -> dict[str, Any]:
    """Everything a partner or the control API can see of the world built above."""
    return {
        "parties": {ref: await sb.party(ref) for ref in ("p-plaid", "p-ach", "p-doc")},
        "transfers": await sb.transfers(),
        "transactions": await sb.transactions(),
        "clock": (await sb.clock())["businessDays"],
        "balance": await partner.balance("p-plaid"),
        "listed": (await partner.get("p-plaid", "/transactions")).json(),
    }


async def test_state_written_then_restarted_is_all_back(tmp_path: Path) -> None:
    async with SandboxServer(settings_for(tmp_path), port=0) as server, http_client() as http:
        sb = RunningSandbox(server)
        partner = Partner(sb, http, await sb.access_token())
        await build_world(partner, sb)
        before = await observe(partner, sb)
        token = partner.token
    assert (tmp_path / STATE_FILE).exists()

    async with SandboxServer(settings_for(tmp_path), port=0) as server, http_client() as http:
        sb = RunningSandbox(server)
        # A token issued before the restart still works, as a Bakkt token would.
        partner = Partner(sb, http, token)
        assert await observe(partner, sb) == before
        assert before["parties"]["p-ach"]["bankAccount"]["partnerTransactionRef"] == "second"
        assert [
            a["partnerTransactionRef"] for a in before["parties"]["p-ach"]["replacedBankAccounts"]
        ] == ["first"]
        assert before["clock"] == 3.5
        # Idempotency keys are remembered: the same key is still a 409, not a second transfer.
        again = await partner.transfer("p-plaid", 40, ref="pending-2", key="k-pend")
        assert again.status_code == 409
        # Planned moves were kept: the pending deposit settles on the restored clock.
        await sb.advance_clock(3)
        assert (await partner.transaction("p-plaid", "pending"))["transactionStatus"] == "COMPLETE"
        assert (await partner.balance("p-plaid"))["settledAmount"] == 140


async def test_pending_webhooks_are_delivered_after_a_restart(tmp_path: Path) -> None:
    # No receiver yet: the delivery stays pending (its retries are far apart) when we stop.
    settings = settings_for(
        tmp_path, webhook_url="http://127.0.0.1:9/hooks", webhook_retry_schedule=[3600.0]
    )
    async with SandboxServer(settings, port=0) as server:
        sb = RunningSandbox(server)
        await sb.set_party_status("p-hook", "SUSPENDED")
        [pending] = await sb.webhooks("PARTY_EVENT", state="pending")
    from bakkt_sandbox.testing import webhook_receiver

    async with webhook_receiver() as receiver:
        restarted = settings.model_copy(update={"webhook_url": receiver.url})
        async with SandboxServer(restarted, port=0):
            [hook] = await receiver.wait_for_count(1)
    assert hook.event["requestId"] == pending["requestId"]
    assert hook.event["partyStatus"] == "SUSPENDED"


async def test_a_reset_through_the_control_api_is_kept_too(tmp_path: Path) -> None:
    async with SandboxServer(settings_for(tmp_path), port=0) as server:
        sb = RunningSandbox(server)
        await sb.credit("p-gone", 10)
        await sb.reset()
    async with SandboxServer(settings_for(tmp_path), port=0) as server:
        sb = RunningSandbox(server)
        assert await sb.transactions() == []
        assert (await sb.party("p-gone"))["settledAmount"] == 0


def test_an_unreadable_snapshot_refuses_to_start_and_names_the_file(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text('{"format": 1, "parties": [')
    with pytest.raises(SnapshotError, match=re.escape(str(tmp_path / STATE_FILE))):
        SandboxServer(settings_for(tmp_path), port=0)
    (tmp_path / STATE_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(SnapshotError, match="format 99"):
        SandboxServer(settings_for(tmp_path), port=0)


def test_in_memory_is_the_default_outside_dev() -> None:
    assert SandboxSettings(_env_file=None).state_dir is None  # type: ignore[call-arg]
    assert build_parser().parse_args(["sandbox"]).state_dir is None


async def test_the_snapshot_is_replaced_whole_and_private(tmp_path: Path) -> None:
    async with SandboxServer(settings_for(tmp_path), port=0) as server:
        sb = RunningSandbox(server)
        await sb.credit("p-file", 5)
        store = server.sandbox.store
        assert store is not None
        store.save(server.sandbox)
        saved = json.loads((tmp_path / STATE_FILE).read_bytes())
        assert [p["ref"] for p in saved["parties"]] == ["p-file"]
    # Only the snapshot is left: no temporary file beside it.
    assert sorted(os.listdir(tmp_path)) == [STATE_FILE]
    assert os.stat(tmp_path / STATE_FILE).st_mode & 0o777 == 0o600


# -- as a process: `fiat-onramp sandbox --state-dir` -------------------------------------------


@pytest.fixture
def start_sandbox(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start() -> tuple[subprocess.Popen[str], str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
        env |= {"SANDBOX_TIME_SCALE": "0", "SANDBOX_WEBHOOK_URL": ""}
        cmd = [sys.executable, "-m", "app.cli", "sandbox", "--port", "0"]
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and command
            [*cmd, "--state-dir", str(tmp_path)], stderr=subprocess.PIPE, text=True, env=env
        )
        procs.append(proc)
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if match := re.search(r"listening on (http://[^\s\"]+)", line):
                return proc, match.group(1)
            if not line and proc.poll() is not None:
                break
        raise AssertionError("the sandbox did not start")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def control(base: str, method: str, path: str, body: Any = None) -> Any:
    resp = httpx.request(method, base + path, json=body, timeout=10)
    assert resp.status_code < 300, resp.text
    return resp.json() if resp.content else None


def wait_for_snapshot(path: Path, predicate: Any, within: float = 10.0) -> None:
    """Wait until the file on disk shows the change: what a SIGKILL would leave behind."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if predicate(json.loads(path.read_bytes())):
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path} never showed the change")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_sandbox_process_keeps_its_state_across_a_restart(
    start_sandbox: Any, tmp_path: Path, stop: signal.Signals
) -> None:
    proc, base = start_sandbox()
    control(base, "POST", "/sandbox/parties/p-proc/credit", {"amount": 70})
    control(base, "POST", "/sandbox/clock/advance", {"days": 2})
    control(base, "POST", "/sandbox/parties/p-proc/status", {"reasonCode": "MAX_ACH_RETURNS"})
    wait_for_snapshot(
        tmp_path / STATE_FILE,
        lambda s: (
            s["businessDays"] == 2
            and any(
                p["ref"] == "p-proc" and p["reasonCode"] == "MAX_ACH_RETURNS" for p in s["parties"]
            )
        ),
    )
    graceful = stop is signal.SIGTERM
    if graceful:
        # Not waited for: only the save on shutdown can keep this one.
        control(base, "POST", "/sandbox/parties/p-proc/credit", {"amount": 5})
    proc.send_signal(stop)
    proc.wait(timeout=15)

    _, base = start_sandbox()
    party = control(base, "GET", "/sandbox/parties/p-proc")
    assert (party["settledAmount"], party["partyStatus"], party["reasonCode"]) == (
        75 if graceful else 70,
        "SUSPENDED",
        "MAX_ACH_RETURNS",
    )
    assert control(base, "GET", "/sandbox/clock")["businessDays"] == 2


# -- `fiat-onramp dev --reset` ------------------------------------------------------------------


def test_dev_reset_clears_the_embedded_database_and_the_sandbox_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDBOX_STATE_DIR", raising=False)
    for sub in ("postgres/base", "sandbox"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "sandbox" / STATE_FILE).write_text("{}")
    removed = reset_dev_state(Settings(_env_file=None, database_url=None), tmp_path)  # type: ignore[call-arg]
    assert sorted(p.name for p in removed) == ["postgres", "sandbox"]
    assert list(tmp_path.iterdir()) == []
    assert build_parser().parse_args(["dev", "--reset"]).reset is True


def test_dev_reset_refuses_to_clear_only_one_side(tmp_path: Path) -> None:
    (tmp_path / "sandbox").mkdir()
    with pytest.raises(SystemExit, match="DATABASE_URL is set"):
        reset_dev_state(
            Settings(_env_file=None, database_url="postgresql://x@127.0.0.1/db"),  # type: ignore[call-arg]
            tmp_path,
        )
    assert (tmp_path / "sandbox").exists()


def test_dev_reset_refuses_while_postgres_runs_but_not_after_a_crash(tmp_path: Path) -> None:
    (tmp_path / "postgres").mkdir()
    pid_file = tmp_path / "postgres" / "postmaster.pid"
    pid_file.write_text(f"{os.getpid()}\n/data\n")
    settings = Settings(_env_file=None, database_url=None)  # type: ignore[call-arg]
    with pytest.raises(SystemExit, match="stop `make dev` first"):
        reset_dev_state(settings, tmp_path)
    # A pid that no process has: the file a crashed Postgres left behind.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_file.write_text(f"{dead.pid}\n/data\n")
    assert [p.name for p in reset_dev_state(settings, tmp_path)] == ["postgres"]
