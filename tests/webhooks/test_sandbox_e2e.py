"""End to end: the service runs under uvicorn on a real port, the Bakkt sandbox signs and POSTs
its webhooks to it, and the consumer-facing API shows what they did."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.auth.dev_token import mint_dev_token
from app.config import Settings
from app.main import create_app
from app.webhooks.models import WebhookEvent
from bakkt_sandbox.testing import RunningSandbox, running_sandbox
from tests.webhooks.events import new_secret

FAST_RETRIES = [0.05, 0.1, 0.2, 0.4]


@dataclass
class Service:
    http: httpx.AsyncClient
    webhook_url: str
    settings: Settings

    def auth(self, party: str) -> dict[str, str]:
        token = mint_dev_token(self.settings, party, admin=False, ttl_seconds=600)
        return {"Authorization": f"Bearer {token}"}

    async def post(self, party: str, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {**self.auth(party), "Idempotency-Key": f"key-{uuid.uuid4().hex}"}
        return await self.http.post(f"/v1/parties/{party}{path}", json=body, headers=headers)

    async def get(self, party: str, path: str) -> Any:
        response = await self.http.get(f"/v1/parties/{party}{path}", headers=self.auth(party))
        assert response.status_code == 200, response.text
        return response.json()


@asynccontextmanager
async def serving(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Service]:
    """The real service on 127.0.0.1 and an ephemeral port, in this event loop."""
    app = create_app(settings, engine=engine)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            yield Service(http, f"{base}/webhooks/bakkt", settings)
    finally:
        server.should_exit = True
        await task


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll the service's own API until `check` holds: what a client would see."""
    for _ in range(int(within / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"not true within {within} s")


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(
        time_scale=0, webhook_url="", webhook_retry_schedule=FAST_RETRIES, webhook_timeout=5.0
    ) as sb:
        yield sb


@pytest.fixture
async def service(
    sandbox: RunningSandbox, settings: Settings, engine: AsyncEngine
) -> AsyncIterator[Service]:
    app_settings = settings.model_copy(update={"bakkt_base_url": sandbox.base_url})
    async with serving(app_settings, engine) as svc:
        await sandbox.set_webhook_mode(url=svc.webhook_url)
        yield svc


async def _link(service: Service, sandbox: RunningSandbox, party: str) -> str:
    response = await service.post(
        party, "/bank-accounts", {"processorToken": f"processor-sandbox-{uuid.uuid4().hex}"}
    )
    assert response.status_code == 202, response.text
    account_id = str(response.json()["id"])

    async def linked() -> bool:
        accounts = (await service.get(party, "/bank-accounts"))["items"]
        return any(a["id"] == account_id and a["status"] == "LINKED" for a in accounts)

    await eventually(linked)
    return account_id


async def _status_of(service: Service, party: str, txn_id: str) -> Any:
    return await service.get(party, f"/transactions/{txn_id}")


async def test_a_deposit_settled_at_the_sandbox_reaches_completed_through_its_webhooks(
    service: Service, sandbox: RunningSandbox
) -> None:
    party = f"e2e-{uuid.uuid4().hex[:10]}"
    account_id = await _link(service, sandbox, party)
    account = next(
        a for a in (await service.get(party, "/bank-accounts"))["items"] if a["id"] == account_id
    )
    assert (account["bankName"], account["accountType"]) == ("First Platypus Bank", "CHECKING")
    assert len(account["accountMask"]) == 4

    deposit = await service.post(party, "/deposits", {"amount": "25.00"})
    assert deposit.status_code == 202, deposit.text
    txn_id = deposit.json()["id"]

    await sandbox.settle(txn_id, party)

    async def completed() -> bool:
        return bool((await _status_of(service, party, txn_id))["status"] == "COMPLETED")

    await eventually(completed)
    detail = await _status_of(service, party, txn_id)
    moves = [(h["to"], h["source"]) for h in detail["history"] if h["applied"]]
    assert ("COMPLETED", "webhook") in moves
    assert await sandbox.drain_webhooks(5) == 0
    deliveries = await sandbox.webhooks(party_ref=party)
    assert deliveries
    assert {d["state"] for d in deliveries} == {"delivered"}
    assert all(a["statusCode"] == 200 for d in deliveries for a in d["attempts"])


async def test_a_return_after_completion_brings_its_fee_and_disables_the_account(
    service: Service, sandbox: RunningSandbox
) -> None:
    party = f"e2e-{uuid.uuid4().hex[:10]}"
    await _link(service, sandbox, party)
    txn_id = (await service.post(party, "/deposits", {"amount": "40.00"})).json()["id"]
    await sandbox.settle(txn_id, party)
    await eventually(
        lambda: _has_status(service, party, txn_id, "COMPLETED"),
    )
    await sandbox.return_transfer(txn_id, party, reason_code="R02", fee="15.00")

    async def returned_with_fee() -> bool:
        items = (await service.get(party, "/transactions"))["items"]
        by_type = {t["type"]: t for t in items}
        fee = by_type.get("RETURN_FEE")
        return (
            by_type.get("DEPOSIT", {}).get("status") == "RETURNED"
            and fee is not None
            and fee["status"] == "COMPLETED"
        )

    await eventually(returned_with_fee)
    detail = await _status_of(service, party, txn_id)
    assert (detail["status"], detail["reasonCode"]) == ("RETURNED", "R02")
    accounts = (await service.get(party, "/bank-accounts"))["items"]
    assert [a["status"] for a in accounts] == ["DISABLED"]
    refused = await service.post(party, "/deposits", {"amount": "10.00"})
    assert refused.status_code >= 400
    assert "disabled" in refused.json()["code"]


async def _has_status(service: Service, party: str, txn_id: str, status: str) -> bool:
    return bool((await _status_of(service, party, txn_id))["status"] == status)


async def test_duplicated_and_reordered_deliveries_of_an_inbound_wire_end_completed(
    service: Service, sandbox: RunningSandbox, engine: AsyncEngine
) -> None:
    party = f"e2e-{uuid.uuid4().hex[:10]}"
    await sandbox.set_webhook_mode(duplicate_rate=1.0, reorder=True, reorder_window_ms=100)
    wire = await sandbox.inbound_wire("1500.00", party, outcome="PENDING")
    await sandbox.settle(wire["partnerTransactionRef"], party)

    async def wire_completed() -> bool:
        items = (await service.get(party, "/transactions"))["items"]
        return [(t["type"], t["method"], t["status"], t["amount"]) for t in items] == [
            ("DEPOSIT", "WIRE", "COMPLETED", "1500.00")
        ]

    await eventually(wire_completed)
    assert await sandbox.drain_webhooks(5) == 0
    deliveries = await sandbox.webhooks(party_ref=party)
    assert len(deliveries) == 4  # two events, each sent twice
    async with AsyncSession(engine) as session:
        stored = await session.execute(
            select(func.count())
            .select_from(WebhookEvent)
            .where(WebhookEvent.request_id.in_({d["requestId"] for d in deliveries}))
        )
        assert stored.scalar_one() == 2


async def test_a_party_suspended_at_bakkt_is_refused_new_deposits(
    service: Service, sandbox: RunningSandbox
) -> None:
    party = f"e2e-{uuid.uuid4().hex[:10]}"
    await _link(service, sandbox, party)
    await sandbox.set_party_status(party, "SUSPENDED", "COMPLIANCE_LOCKED")
    # Once the PARTY_EVENT is acknowledged it has been applied: the refusal below must come from
    # the service's own record of the party, before any call to Bakkt.
    assert await sandbox.drain_webhooks(5) == 0
    events = await sandbox.webhooks("PARTY_EVENT", party_ref=party)
    assert [(e["event"]["partyStatus"], e["state"]) for e in events] == [("SUSPENDED", "delivered")]

    response = await service.post(party, "/deposits", {"amount": "10.00"})
    assert response.status_code == 403, response.text
    body = response.json()
    assert (body["code"], body["partyStatus"], body["reasonCode"]) == (
        "party_suspended",
        "SUSPENDED",
        "COMPLIANCE_LOCKED",
    )
    assert await sandbox.transactions(party) == []


async def test_webhooks_signed_with_another_secret_are_refused_and_retried(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with running_sandbox(
        time_scale=0,
        webhook_url="",
        webhook_retry_schedule=[0.05, 0.05],
        webhook_secret=SecretStr(new_secret()),
    ) as sandbox:
        app_settings = settings.model_copy(update={"bakkt_base_url": sandbox.base_url})
        async with serving(app_settings, engine) as svc:
            await sandbox.set_webhook_mode(url=svc.webhook_url)
            party = f"e2e-{uuid.uuid4().hex[:10]}"
            await sandbox.set_party_status(party, "SUSPENDED", "OTHER")
            await sandbox.drain_webhooks(5)
            [delivery] = await sandbox.webhooks(party_ref=party)
    assert delivery["state"] == "failed"
    assert [a["statusCode"] for a in delivery["attempts"]] == [401, 401, 401]
    async with AsyncSession(engine) as session:
        stored = await session.execute(
            select(func.count())
            .select_from(WebhookEvent)
            .where(WebhookEvent.request_id == delivery["requestId"])
        )
        assert stored.scalar_one() == 0
