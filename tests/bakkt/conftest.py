"""A real Bakkt sandbox over HTTP for the client's tests, and clients pointed at it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from app.bakkt import BakktClient, BakktConfig
from app.bakkt.transport import build_http_client
from bakkt_sandbox.testing import RunningSandbox, running_sandbox


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sandbox_server() -> AsyncIterator[RunningSandbox]:
    # Frozen business clock and no webhook target: only what a test does moves state.
    async with running_sandbox(time_scale=0, webhook_url="") as sandbox:
        yield sandbox


@pytest_asyncio.fixture(loop_scope="session")
async def sandbox(sandbox_server: RunningSandbox) -> RunningSandbox:
    await sandbox_server.reset()
    await sandbox_server.clear_faults()
    return sandbox_server


@dataclass
class Traffic:
    """Every request the client put on the wire, as the transport saw it."""

    requests: list[httpx.Request] = field(default_factory=list)

    async def hook(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def to(self, suffix: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith(suffix)]

    @property
    def token_requests(self) -> int:
        return len(self.to("/oauth2/token"))


def sandbox_config(sandbox: RunningSandbox, transport: Any, **overrides: Any) -> BakktConfig:
    values: dict[str, Any] = {
        "base_url": sandbox.base_url,
        "partner_id": sandbox.partner_id,
        "client_id": sandbox.client_id,
        "client_secret": SecretStr(sandbox.client_secret),
        "transport": transport,
        "read_timeout": 1.0,
        "connect_timeout": 0.5,
        "pool_timeout": 1.0,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "max_retry_after": 2.0,
        **overrides,
    }
    return BakktConfig(**values)


def make_client(
    sandbox: RunningSandbox,
    transport: Any,
    traffic: Traffic | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    on_response: Callable[[httpx.Response], Awaitable[None]] | None = None,
    **overrides: Any,
) -> BakktClient:
    config = sandbox_config(sandbox, transport, **overrides)
    http = build_http_client(config)
    if traffic is not None:
        http.event_hooks["request"].append(traffic.hook)
    if on_response is not None:
        http.event_hooks["response"].append(on_response)
    return BakktClient(config, http=http, clock=clock)


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def traffic() -> Traffic:
    return Traffic()


@pytest_asyncio.fixture(loop_scope="session")
async def client(
    sandbox: RunningSandbox, transport: str, traffic: Traffic
) -> AsyncIterator[BakktClient]:
    async with make_client(sandbox, transport, traffic) as bakkt:
        yield bakkt
