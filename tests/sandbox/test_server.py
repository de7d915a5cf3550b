"""Starting and stopping the sandbox, its settings, and the generic control endpoints."""

import asyncio
import os
import re
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx
import pytest

from app.config import Settings
from app.webhooks.router import router as webhook_router
from bakkt_sandbox.config import SandboxSettings
from bakkt_sandbox.server import DEFAULT_HOST, DEFAULT_PORT, SandboxServer, serve
from bakkt_sandbox.testing import RunningSandbox, SandboxError
from tests.sandbox.conftest import Partner


def test_default_settings_match_the_service_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both sides' defaults, not literals: `fiat-onramp dev` works with no settings only while the
    # service's defaults (app/config.py) and the sandbox's agree, whichever side changes.
    for name in list(os.environ):
        if name.startswith(("SANDBOX_", "BAKKT_", "IDEMPOTENCY_")):
            monkeypatch.delenv(name)
    sandbox = SandboxSettings()
    service = Settings(_env_file=None)  # type: ignore[call-arg]
    assert sandbox.partner_id == service.bakkt_partner_id
    assert sandbox.client_id == service.bakkt_client_id
    assert (
        sandbox.client_secret.get_secret_value() == service.bakkt_client_secret.get_secret_value()
    )
    assert sandbox.webhook_secret.get_secret_value() in [
        s.get_secret_value() for s in service.bakkt_webhook_secrets
    ]
    assert f"http://{DEFAULT_HOST}:{DEFAULT_PORT}" == service.bakkt_base_url
    assert urlsplit(sandbox.webhook_url).path in {
        getattr(route, "path", None) for route in webhook_router.routes
    }
    # Bakkt keeps an idempotency key 10 days (docs/bakkt-contract.md A7); so do both sides.
    assert sandbox.idempotency_ttl == service.idempotency_ttl_days * 24 * 3600


def test_settings_come_from_sandbox_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_TIME_SCALE", "0.5")
    monkeypatch.setenv("SANDBOX_WEBHOOK_URL", "")
    monkeypatch.setenv("SANDBOX_WEBHOOK_RETRY_SCHEDULE", "[0.1, 0.2]")
    monkeypatch.setenv("SANDBOX_WEBHOOK_MODES", '{"duplicateRate": 0.5, "reorder": true}')
    s = SandboxSettings()
    assert (s.time_scale, s.webhook_url, s.webhook_retry_schedule) == (0.5, "", [0.1, 0.2])
    assert (s.webhook_modes.duplicate_rate, s.webhook_modes.reorder) == (0.5, True)


async def test_serve_runs_in_the_current_loop_until_cancelled() -> None:
    settings = SandboxSettings(webhook_url="", time_scale=0)
    # Port 0 through SandboxServer to learn the port; serve() is the same server behind a task.
    async with SandboxServer(settings, port=0) as server, httpx.AsyncClient() as http:
        assert (await http.get(server.base_url + "/sandbox")).json()["sandbox"] == "bakkt"
    task = asyncio.create_task(serve("127.0.0.1", 0, settings))
    await asyncio.sleep(0.2)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_run_blocks_serving_until_terminated() -> None:
    code = (
        "from bakkt_sandbox.server import run; from bakkt_sandbox.config import SandboxSettings; "
        "run(port=0, settings=SandboxSettings(webhook_url=''))"
    )
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and a fixed script
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            match = re.search(r"listening on (http://[^\s\"]+)", line)
            url = match.group(1) if match else None
        assert url is not None
        assert httpx.get(url + "/sandbox", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_index_summarises_the_sandbox(
    bakkt_sandbox: RunningSandbox, http: httpx.AsyncClient
) -> None:
    body = (await http.get(bakkt_sandbox.base_url + "/sandbox")).json()
    assert body["settings"]["partnerId"] == bakkt_sandbox.partner_id
    assert "client_secret" not in str(body).lower()
    assert {"clock", "parties", "transfers", "webhooks", "faults"} <= set(body)


async def test_reset_forgets_parties_transfers_webhooks_and_keys(
    fresh_bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await partner.transfer(linked_party, 10, ref="rs-1", key="reset-key")
    await fresh_bakkt_sandbox.advance_clock(1)
    await fresh_bakkt_sandbox.reset()
    assert await fresh_bakkt_sandbox.transfers() == []
    assert await fresh_bakkt_sandbox.webhooks() == []
    assert (await fresh_bakkt_sandbox.clock())["businessDays"] == 0
    assert (await fresh_bakkt_sandbox.party(linked_party))["bankAccount"] is None
    await partner.link(linked_party)
    assert (
        await partner.transfer(linked_party, 10, ref="rs-1", key="reset-key")
    ).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/sandbox/clock/advance", {"days": -1}),
        ("/sandbox/clock", {"timeScale": "fast"}),
        ("/sandbox/parties/p/status", {"status": "HAPPY"}),
        ("/sandbox/webhooks/settings", {"dropRate": 2}),
        ("/sandbox/wires/inbound", {"amount": 0}),
        ("/sandbox/transactions/x/explode", {}),
    ],
)
async def test_control_api_refuses_bad_requests(
    bakkt_sandbox: RunningSandbox, http: httpx.AsyncClient, path: str, body: dict[str, object]
) -> None:
    resp = await http.post(bakkt_sandbox.base_url + path, json=body)
    assert resp.status_code in (400, 404)
    assert "type" in resp.json()


async def test_control_helper_raises_sandbox_error(bakkt_sandbox: RunningSandbox) -> None:
    with pytest.raises(SandboxError) as err:
        await bakkt_sandbox.advance_clock(-1)
    assert err.value.status == 400
