"""Fixtures for the sandbox's own tests: the session sandbox and a partner-side HTTP helper."""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from httpx_aiohttp import HttpxAiohttpClient

from bakkt_sandbox.testing import RunningSandbox

PLUGIN = "bakkt_sandbox.pytest_plugin"


def pytest_configure(config: pytest.Config) -> None:
    # The root conftest may already list the plugin in `pytest_plugins`; register it only once.
    if not config.pluginmanager.has_plugin(PLUGIN):
        config.pluginmanager.import_plugin(PLUGIN)


class Partner:
    """Calls `/partner/v1` the way a partner would, with a bearer token."""

    def __init__(self, sandbox: RunningSandbox, http: httpx.AsyncClient, token: str) -> None:
        self.sandbox = sandbox
        self.http = http
        self.token = token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def post(
        self, party: str, suffix: str, body: Any = None, *, content: bytes | None = None
    ) -> httpx.Response:
        url = self.sandbox.party_url(party, suffix)
        if content is not None:
            headers = {**self.headers, "content-type": "application/json"}
            return await self.http.post(url, content=content, headers=headers)
        return await self.http.post(url, json=body, headers=self.headers)

    async def get(self, party: str, suffix: str, params: Any = None) -> httpx.Response:
        return await self.http.get(
            self.sandbox.party_url(party, suffix), params=params, headers=self.headers
        )

    async def transfer(
        self,
        party: str,
        amount: float | int | str = 100,
        direction: str = "DEPOSIT",
        instrument: str = "ACH",
        *,
        ref: str | None = None,
        key: str | None = None,
        **extra: Any,
    ) -> httpx.Response:
        body = {
            "amount": amount,
            "currency": "USD",
            "fiatTransactType": direction,
            "instrumentType": instrument,
            "partnerTransactionRef": ref or f"tx-{uuid.uuid4().hex[:12]}",
            "idempotencyKey": key or str(uuid.uuid4()),
            **extra,
        }
        if isinstance(amount, str):
            # A raw JSON number, so the sandbox sees exactly these digits.
            raw = httpx.Request("POST", "http://x", json={**body, "amount": 0}).content
            content = raw.replace(b'"amount":0', b'"amount":' + amount.encode())
            return await self.post(party, "/transfer", content=content)
        return await self.post(party, "/transfer", body)

    async def link(self, party: str, token: str = "processor-sandbox-ok") -> None:  # noqa: S107
        resp = await self.post(
            party,
            "/plaidAccount/link",
            {"processorToken": token, "partnerTransactionRef": f"link-{uuid.uuid4().hex[:8]}"},
        )
        assert resp.status_code == 200, resp.text

    async def balance(self, party: str) -> dict[str, Any]:
        resp = await self.get(party, "/fiatAccount/balance")
        assert resp.status_code == 200, resp.text
        row: dict[str, Any] = resp.json()[0]
        return row

    async def transaction(self, party: str, ref: str) -> dict[str, Any]:
        resp = await self.get(party, f"/transactions/{ref}")
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data


async def make_partner(sandbox: RunningSandbox, http: httpx.AsyncClient) -> Partner:
    return Partner(sandbox, http, await sandbox.access_token())


def http_client(timeout: float = 10.0) -> httpx.AsyncClient:
    # httpx's own pool is slow under concurrency; the aiohttp transport is what the service uses.
    return HttpxAiohttpClient(timeout=timeout)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with http_client() as client:
        yield client


@pytest.fixture
async def partner(bakkt_sandbox: RunningSandbox, http: httpx.AsyncClient) -> Partner:
    # A fault left behind by a failed test must not leak into the next one.
    await bakkt_sandbox.clear_faults()
    return await make_partner(bakkt_sandbox, http)


@pytest.fixture
def party() -> str:
    """A party ref no other test uses, so tests can share the session sandbox."""
    return f"party-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def linked_party(partner: Partner, party: str) -> str:
    await partner.link(party)
    return party
