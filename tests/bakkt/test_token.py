"""The bearer token: cached, renewed before expiry, renewed once on a 401, one fetch at a time."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import httpx
import pytest
from pydantic import SecretStr

from app.bakkt import BakktAuthFailed
from bakkt_sandbox.testing import RunningSandbox
from tests.bakkt.conftest import Traffic, make_client

CALLERS = 50


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_token_is_fetched_once_and_reused(
    sandbox: RunningSandbox, transport: str, traffic: Traffic
) -> None:
    async with make_client(sandbox, transport, traffic) as client:
        for _ in range(5):
            await client.balance(f"p-{uuid.uuid4().hex}")
    assert traffic.token_requests == 1


async def test_first_use_by_50_concurrent_callers_fetches_one_token(
    sandbox: RunningSandbox, transport: str, traffic: Traffic
) -> None:
    async with make_client(sandbox, transport, traffic) as client:
        await asyncio.gather(*(client.balance(f"p-{i}") for i in range(CALLERS)))
    assert traffic.token_requests == 1


async def test_token_near_expiry_is_renewed_once_for_50_concurrent_callers(
    sandbox: RunningSandbox, transport: str, traffic: Traffic
) -> None:
    clock = FakeClock()
    # The sandbox's tokens live 3600 s; with a 60 s margin the client renews at 3540 s.
    async with make_client(
        sandbox, transport, traffic, clock=clock, token_refresh_margin=60.0
    ) as client:
        await client.balance("p-0")
        clock.now += 3539
        await asyncio.gather(*(client.balance(f"p-{i}") for i in range(CALLERS)))
        assert traffic.token_requests == 1
        clock.now += 2
        await asyncio.gather(*(client.balance(f"p-{i}") for i in range(CALLERS)))
    assert traffic.token_requests == 2
    bearer = {r.headers["authorization"] for r in traffic.requests[-CALLERS:]}
    assert len(bearer) == 1


async def test_token_expired_at_bakkt_is_renewed_once_and_each_call_retried_at_most_once(
    sandbox: RunningSandbox, transport: str, traffic: Traffic
) -> None:
    async with make_client(sandbox, transport, traffic) as client:
        await client.balance("p-0")
        await sandbox.expire_tokens()
        results = await asyncio.gather(*(client.balance(f"p-{i}") for i in range(CALLERS)))
    assert len(results) == CALLERS
    assert traffic.token_requests == 2
    first, *rest = traffic.to("/fiatAccount/balance")
    old = first.headers["authorization"]
    sent: dict[str, list[str]] = defaultdict(list)
    for request in rest:
        party = request.url.path.split("/party/")[1].split("/")[0]
        sent[party].append(request.headers["authorization"])
    assert len(sent) == CALLERS
    [new] = {tokens[-1] for tokens in sent.values()}
    assert new != old
    # A send with the old token is refused and resent once with the new one. A caller whose
    # first send comes after the renewal (the event loop decides which, not the test) sends
    # once, with the new token. Nobody sends twice with one token or more than twice.
    assert all(tokens in ([old, new], [new]) for tokens in sent.values()), sent


async def test_wrong_client_secret_is_auth_failed(
    sandbox: RunningSandbox, transport: str, traffic: Traffic
) -> None:
    async with make_client(sandbox, transport, traffic, client_secret=SecretStr("wrong")) as client:
        with pytest.raises(BakktAuthFailed):
            await client.balance("p-0")
    assert traffic.token_requests == 1


async def test_a_token_refused_again_after_renewal_is_auth_failed_not_a_loop(
    sandbox: RunningSandbox, transport: str, traffic: Traffic
) -> None:
    async def expire_every_new_token(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/oauth2/token"):
            await sandbox.expire_tokens()

    async with make_client(
        sandbox, transport, traffic, on_response=expire_every_new_token
    ) as client:
        with pytest.raises(BakktAuthFailed):
            await client.balance("p-0")
    assert traffic.token_requests == 2
    assert len(traffic.to("/fiatAccount/balance")) == 2
