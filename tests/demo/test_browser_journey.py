"""The project's end-to-end test: the demo page in a real browser (Debian's Chromium, driven by
playwright), against the service and the Bakkt sandbox as real processes, walking the whole
journey a consumer takes. A screenshot of each step is saved under .data/screenshots/demo/.

The sandbox's clock is frozen, so every settlement happens when the page's sandbox panel moves
the clock; each wait is on something the page shows (a row's status, the balance), never a
sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app import migrate
from tests.fault.harness import ManagedProcess, clean_environment, free_port, tail

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("DEMO_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO_ROOT / ".data" / "screenshots" / "demo"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1360, "height": 900}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM}: the browser journey needs Debian's chromium package "
    "(apt-get install -y chromium); .ci/run installs it when it can",
)

# Frozen business clock; webhook retries short enough that one sent before the service listens
# arrives within a second of it.
SANDBOX_ENV = {
    "SANDBOX_TIME_SCALE": "0",
    "SANDBOX_WEBHOOK_RETRY_SCHEDULE": "[0.2, 0.5, 1, 2, 4]",
    "SANDBOX_WEBHOOK_TIMEOUT": "3",
}
# Bakkt timeouts and recovery in seconds (the service's first look at an unknown outcome is
# 10 s after it, fixed; the settle job then runs every second).
SERVICE_ENV = {
    "APP_ENV": "development",
    "LOG_LEVEL": "WARNING",
    "WORKERS_ENABLED": "true",
    "BAKKT_READ_TIMEOUT": "3",
    "BAKKT_RETRY_BACKOFF_BASE": "0.05",
    "BAKKT_RETRY_BACKOFF_CAP": "0.2",
    "RECOVERY_SETTLE_INTERVAL": "1",
    "RECOVERY_UNKNOWN_BACKOFF_BASE": "3",
    "RECOVERY_UNKNOWN_BACKOFF_CAP": "5",
    "RECOVERY_SWEEP_INTERVAL": "2",
}


@dataclass
class Stack:
    service: ManagedProcess
    sandbox: ManagedProcess

    def logs(self) -> str:
        return (
            f"--- service log ---\n{tail(self.service.log)}\n"
            f"--- sandbox log ---\n{tail(self.sandbox.log, 20)}"
        )


def _libpq(url: str) -> str:
    return str(make_url(url).set(drivername="postgresql").render_as_string(False))


@pytest.fixture
async def stack(postgres_server_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """A migrated database of its own (the service commits for real), the sandbox and the service
    as processes on free ports, pointed at each other."""
    name = f"fiat_demo_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_libpq(postgres_server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(postgres_server_url).set(database=name).render_as_string(False)
    engine = create_async_engine(url)
    try:
        await migrate.upgrade_async(engine)
    finally:
        await engine.dispose()

    service_port, sandbox_port = free_port(), free_port()
    sandbox = ManagedProcess(
        "sandbox",
        ["sandbox", "--port", str(sandbox_port)],
        clean_environment(
            {
                **SANDBOX_ENV,
                "SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{service_port}/webhooks/bakkt",
            }
        ),
        tmp_path,
        sandbox_port,
    )
    service = ManagedProcess(
        "service",
        ["serve", "--port", str(service_port)],
        clean_environment({**SERVICE_ENV, "DATABASE_URL": url, "BAKKT_BASE_URL": sandbox.base_url}),
        tmp_path,
        service_port,
    )
    try:
        # Started together: the sandbox is up long before the service has imported itself.
        sandbox.start()
        service.start()
        await sandbox.wait_http("/sandbox")
        await service.wait_http("/readyz", within=90)
        yield Stack(service, sandbox)
    finally:
        service.terminate()
        sandbox.terminate()
        admin = await asyncpg.connect(_libpq(postgres_server_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class Journey:
    """The page, and the screenshots taken along the way."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.shots: list[Path] = []

    async def shot(self, name: str) -> None:
        path = SCREENSHOTS / f"{len(self.shots) + 1:02d}-{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)

    async def ids(self) -> list[str]:
        ids: list[str] = await self.page.eval_on_selector_all(
            "#transactions tr.txn", "rows => rows.map(r => r.dataset.id)"
        )
        return ids

    async def move_money(self, op: str, preset: str) -> str:
        """Submits the money form; returns the id of the transaction it created."""
        await self.page.check(f'input[name="op"][value="{op}"]')
        await self.page.select_option("#amount-preset", label=preset)
        before = await self.ids()
        await self.page.click("#money-submit")
        created = await self.page.wait_for_function(
            """before => [...document.querySelectorAll('#transactions tr.txn')]
                .map(r => r.dataset.id).find(id => !before.includes(id))""",
            arg=before,
        )
        txn_id: str = await created.json_value()
        return txn_id

    async def row(self, txn_id: str, status: str) -> None:
        await self.page.wait_for_selector(
            f'#transactions tr.txn[data-id="{txn_id}"][data-status="{status}"]'
        )

    async def open_history(self, txn_id: str, to: str) -> None:
        await self.page.click(f'#transactions tr.txn[data-id="{txn_id}"]')
        await self.page.wait_for_selector(f'tr.history[data-for="{txn_id}"] li[data-to="{to}"]')

    async def balance(self, settled: str) -> None:
        await self.page.wait_for_selector(f'#balance-settled[data-amount="{settled}"]')

    async def advance(self, days: int) -> None:
        await self.page.click(f'[data-advance="{days}"]')

    async def logged(self, text: str) -> None:
        await self.page.wait_for_function(
            "text => document.querySelector('#log').innerText.includes(text)", arg=text
        )


async def test_the_whole_journey_in_a_browser(stack: Stack) -> None:
    async_api = pytest.importorskip("playwright.async_api", reason="the playwright package")
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    started = time.monotonic()
    party = f"e2e-{uuid.uuid4().hex[:8]}"
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = await browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        journey = Journey(page)
        try:
            await _walk(journey, stack.service.base_url, party)
        except BaseException:
            with contextlib.suppress(Exception):
                await page.screenshot(path=str(SCREENSHOTS / "failure.png"), full_page=True)
                print("--- the page's activity log ---\n" + await page.inner_text("#log"))  # noqa: T201
            print(stack.logs())  # noqa: T201
            raise
        finally:
            await browser.close()
    assert errors == [], errors
    print(  # noqa: T201
        f"\nbrowser journey: {len(journey.shots)} screenshots in {time.monotonic() - started:.1f} s"
        + "".join(f"\n  {p.relative_to(REPO_ROOT)}" for p in journey.shots)
    )


async def _walk(j: Journey, base_url: str, party: str) -> None:
    page = j.page
    await page.goto(f"{base_url}/demo")
    await page.fill("#party-input", party)
    await page.click("#party-open")
    await page.wait_for_selector('#party-status[data-status="ACTIVE"]')
    # Live over the party's event stream, not by polling.
    await page.wait_for_selector('#feed-status[data-state="live"]')
    await j.shot("party-opened")

    # 1. Bakkt's hosted link page, and back.
    await page.click("#link-hosted")
    await page.wait_for_selector("text=Link your bank account")
    await j.shot("hosted-link-page")
    await page.click('button[value="checking"]')
    await page.wait_for_url(f"**/demo?party={party}*")
    await page.wait_for_selector("#banner >> text=LINKED")
    await page.wait_for_selector('#accounts tr[data-method="HOSTED"][data-status="LINKED"]')
    await page.wait_for_selector('#feed-status[data-state="live"]')
    await j.shot("hosted-link-linked")

    # 2. A Plaid processor token: the new account becomes current, the hosted one REPLACED.
    await page.select_option("#plaid-token", label="processor-sandbox-ok — links")
    await page.click("#link-plaid")
    await page.wait_for_selector('#accounts tr[data-method="PLAID"][data-status="LINKED"]')
    await page.wait_for_selector('#accounts tr[data-method="HOSTED"][data-status="REPLACED"]')
    await j.shot("plaid-linked")

    # 3. A deposit, settled when the sandbox's clock passes T+3; the balance follows.
    deposit = await j.move_money("deposit", "25.00 — settles")
    await j.row(deposit, "PENDING")
    await j.shot("deposit-pending")
    await j.advance(3)
    await j.row(deposit, "COMPLETED")
    await j.balance("25.00")
    await page.wait_for_selector('#events li[data-type="transaction.completed"]')
    await j.open_history(deposit, "COMPLETED")
    await j.shot("deposit-settled")

    # 4. Withdrawals: ACH to the linked account, then a wire.
    ach = await j.move_money("withdraw-ach", "10.00 — completes")
    await j.row(ach, "PENDING")
    await j.advance(1)
    await j.row(ach, "COMPLETED")
    await j.balance("15.00")
    await j.shot("ach-withdrawal-completed")
    wire = await j.move_money("withdraw-wire", "12.00 — completes")
    await j.row(wire, "PENDING")
    await j.advance(1)
    await j.row(wire, "COMPLETED")
    await j.balance("3.00")
    await j.shot("wire-withdrawal-completed")

    # 5. A fault: Bakkt answers 503 to every attempt, the deposit is UNKNOWN; recovery finds
    # that Bakkt never got it and re-sends it with the same key.
    await page.select_option("#fault-preset", label="5xx: Bakkt answers 503 to the next transfer")
    await page.click("#fault-inject")
    await page.wait_for_selector('#faults li[data-mode="error"]')
    lost = await j.move_money("deposit", "25.00 — settles")
    await j.logged("Deposit 25.00: 202, UNKNOWN")
    await j.shot("fault-unknown")
    await j.row(lost, "PENDING")
    await j.open_history(lost, "PENDING")
    await page.wait_for_selector(
        f'tr.history[data-for="{lost}"] li[data-to="PENDING"][data-source="sync"]'
    )
    await j.shot("fault-recovered")

    # 6. Bakkt suspends the party: the next deposit is refused, and nothing is written.
    await page.click('[data-party-status="SUSPENDED"]')
    await page.wait_for_selector('#party-status[data-status="SUSPENDED"]')
    before = await j.ids()
    await page.check('input[name="op"][value="deposit"]')
    await page.select_option("#amount-preset", label="25.00 — settles")
    await page.click("#money-submit")
    await page.wait_for_selector("#money-error >> text=party_suspended")
    assert await j.ids() == before
    await j.shot("suspended-deposit-refused")
    await page.click('[data-party-status="ACTIVE"]')
    await page.wait_for_selector('#party-status[data-status="ACTIVE"]')

    # 7. A return after completion, with its R-code and the return fee Bakkt charges.
    returned = await j.move_money("deposit", "25.04 — completes, then returned with a fee")
    await j.row(returned, "PENDING")
    await j.advance(3)
    await j.row(returned, "COMPLETED")
    await j.advance(3)
    await j.row(returned, "RETURNED")
    await page.wait_for_selector(f'#transactions tr.txn[data-id="{returned}"] >> text=R10')
    await page.wait_for_selector(
        '#transactions tr.txn[data-type="RETURN_FEE"][data-amount="15.00"][data-status="COMPLETED"]'
    )
    await page.wait_for_selector("#accounts >> text=flagged for review")
    await j.open_history(returned, "RETURNED")
    await j.shot("returned-with-fee")
    # The whole page, tidied (the README's picture): the banner dismissed, one history open.
    await page.click("#banner button")
    await page.wait_for_selector("#banner", state="hidden")
    for txn_id in (deposit, lost):
        await page.click(f'#transactions tr.txn[data-id="{txn_id}"]')
        await page.wait_for_selector(f'tr.history[data-for="{txn_id}"]', state="detached")
    await j.shot("overview")
