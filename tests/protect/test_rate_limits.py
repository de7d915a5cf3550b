"""Rate limits per party and per route: 429 `rate_limited` with Retry-After, nothing changed,
one party's traffic never counted against another, webhook intake and health not limited."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.core.rates import PRUNE_EVERY_SECONDS, Rate, RouteLimiter, parse_rate
from app.main import create_app
from app.startup import ConfigError
from bakkt_sandbox.testing import RunningSandbox
from tests.protect.conftest import Service, ServiceFactory

DEPOSITS = "/v1/parties/{partyRef}/deposits"


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"key-{uuid.uuid4()}"}


async def link(svc: Service, sql: Callable[..., Any], party: str) -> None:
    """A bank account linked at the sandbox, then LINKED as Bakkt's webhook would make it."""
    response = await svc.http.post(
        f"/v1/parties/{party}/bank-accounts",
        json={"processorToken": f"processor-sandbox-{uuid.uuid4().hex}"},
        headers={**svc.headers(party), **key()},
    )
    assert response.status_code == 202, response.text
    await sql(
        "UPDATE bank_accounts SET status = 'LINKED' WHERE id = :id", {"id": response.json()["id"]}
    )


async def deposit(
    svc: Service, party: str, *, as_party: str | None = None, **extra: str
) -> httpx.Response:
    headers = {**svc.headers(as_party or party), **key(), **extra}
    return await svc.http.post(
        f"/v1/parties/{party}/deposits", json={"amount": "10.00"}, headers=headers
    )


# --- the limiter ----------------------------------------------------------------------------------


def test_a_burst_of_the_count_passes_then_one_request_per_interval() -> None:
    limiter = RouteLimiter(Rate(3, 60.0))
    assert [limiter.hit("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.hit("a", 100.0) == pytest.approx(20.0)
    assert limiter.hit("a", 119.9) == pytest.approx(0.1)
    assert limiter.hit("a", 120.0) == 0.0
    assert limiter.hit("a", 120.0) == pytest.approx(20.0)
    # Another key has a bucket of its own.
    assert limiter.hit("b", 120.0) == 0.0


def test_a_refused_request_is_not_counted() -> None:
    limiter = RouteLimiter(Rate(1, 10.0))
    assert limiter.hit("a", 0.0) == 0.0
    for _ in range(100):
        assert limiter.hit("a", 5.0) == pytest.approx(5.0)
    assert limiter.hit("a", 10.0) == 0.0


def test_full_buckets_are_forgotten() -> None:
    limiter = RouteLimiter(Rate(2, 1.0))
    for n in range(1000):
        limiter.hit(n, 0.0)
    assert len(limiter) == 1000
    limiter.hit("late", PRUNE_EVERY_SECONDS + 1)
    assert len(limiter) == 1


@pytest.mark.parametrize(
    ("text", "rate"),
    [("60/minute", Rate(60, 60.0)), ("5 / seconds", Rate(5, 1.0)), ("1/DAY", Rate(1, 86400.0))],
)
def test_rates_are_read_as_count_per_unit(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0/minute", "60", "60/fortnight", "-1/second", "1.5/second"])
def test_other_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a rate"):
        parse_rate(text)


def test_a_route_override_naming_no_route_refuses_to_start() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, rate_limit_routes="POST /v1/parties/{partyRef}/deposit=1/minute"
    )
    with pytest.raises(ConfigError, match="deposit is not a route of the service"):
        create_app(settings)


# --- through the API ------------------------------------------------------------------------------


async def test_past_the_limit_a_deposit_gets_429_with_retry_after_and_changes_nothing(
    service: ServiceFactory, sql: Callable[..., Any], sandbox: RunningSandbox, party: str
) -> None:
    async with service(rate_limit_writes="2/minute") as svc:
        await link(svc, sql, party)
        assert [(await deposit(svc, party)).status_code for _ in range(2)] == [202, 202]
        refused = await deposit(svc, party)

    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "30"
    body = refused.json()
    assert body["code"] == "rate_limited"
    assert body["detail"] == f"At most 2/minute requests to POST {DEPOSITS}; retry in 30 s."
    assert body["requestId"] == refused.headers["x-request-id"]
    [[transactions]] = await sql(
        "SELECT count(*) FROM transactions WHERE party_ref = :p", {"p": party}
    )
    [[keys]] = await sql("SELECT count(*) FROM idempotency_keys WHERE party_ref = :p", {"p": party})
    assert (transactions, keys) == (2, 3)  # the two deposits, and their keys plus the link's
    assert len(await sandbox.transfers(party)) == 2


async def test_the_same_key_after_retry_after_is_served_once(
    service: ServiceFactory, sql: Callable[..., Any], sandbox: RunningSandbox, party: str
) -> None:
    async with service(rate_limit_writes="1/minute") as svc:
        await link(svc, sql, party)
        assert (await deposit(svc, party)).status_code == 202
        same = key()
        refused = await deposit(svc, party, **same)
        assert refused.status_code == 429
        svc.clock.advance(float(refused.headers["retry-after"]))
        accepted = await deposit(svc, party, **same)
        svc.clock.advance(60)
        replayed = await deposit(svc, party, **same)

    assert accepted.status_code == 202
    assert replayed.status_code == 202
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["id"] == accepted.json()["id"]
    assert len(await sandbox.transfers(party)) == 2


async def test_each_party_and_each_route_has_its_own_allowance(
    service: ServiceFactory, party: str
) -> None:
    other = f"{party}-other"
    async with service(rate_limit_reads="2/minute") as svc:
        path = "/v1/parties/{}/transactions"
        first = [
            (await svc.http.get(path.format(party), headers=svc.headers(party))).status_code
            for _ in range(3)
        ]
        others = await svc.http.get(path.format(other), headers=svc.headers(other))
        balance_route = await svc.http.get(
            f"/v1/parties/{party}/bank-accounts", headers=svc.headers(party)
        )

    assert first == [200, 200, 429]
    assert others.status_code == 200
    assert balance_route.status_code == 200


async def test_a_consumer_asking_for_another_partys_path_uses_up_its_own_allowance(
    service: ServiceFactory, party: str
) -> None:
    victim = f"{party}-victim"
    async with service(rate_limit_reads="2/minute") as svc:
        path = f"/v1/parties/{victim}/transactions"
        attempts = [
            (await svc.http.get(path, headers=svc.headers(party))).status_code for _ in range(3)
        ]
        victims_own = await svc.http.get(path, headers=svc.headers(victim))

    assert attempts == [404, 404, 429]
    assert victims_own.status_code == 200


async def test_the_partners_back_end_is_counted_per_party_it_acts_for(
    service: ServiceFactory, party: str
) -> None:
    admin = {"sub": "partner-backend"}
    async with service(rate_limit_reads="1/minute") as svc:
        headers = svc.headers(admin["sub"], admin=True)
        answers = [
            (await svc.http.get(f"/v1/parties/{p}/transactions", headers=headers)).status_code
            for p in (party, f"{party}-2", party)
        ]

    assert answers == [200, 200, 429]


async def test_a_route_of_its_own_in_rate_limit_routes_wins_over_the_default(
    service: ServiceFactory, sql: Callable[..., Any], party: str
) -> None:
    async with service(
        rate_limit_writes="100/minute", rate_limit_routes=f"POST {DEPOSITS}=1/hour"
    ) as svc:
        await link(svc, sql, party)
        answers = [(await deposit(svc, party)).status_code for _ in range(2)]
        refused = await deposit(svc, party)

    assert answers == [202, 429]
    assert refused.headers["retry-after"] == "3600"


async def test_webhooks_health_and_metrics_are_not_limited(service: ServiceFactory) -> None:
    async with service(rate_limit_reads="1/minute", rate_limit_writes="1/minute") as svc:
        statuses = set()
        for _ in range(5):
            statuses.add((await svc.http.get("/healthz")).status_code)
            statuses.add((await svc.http.get("/metrics")).status_code)
            # Unsigned: refused by the receiver, never by a limiter.
            statuses.add((await svc.http.post("/webhooks/bakkt", content=b"{}")).status_code)

    assert 429 not in statuses
    assert 200 in statuses


async def test_rate_limits_can_be_turned_off(service: ServiceFactory, party: str) -> None:
    async with service(rate_limit_enabled=False, rate_limit_reads="1/minute") as svc:
        path = f"/v1/parties/{party}/transactions"
        answers = {
            (await svc.http.get(path, headers=svc.headers(party))).status_code for _ in range(5)
        }

    assert answers == {200}


async def test_the_token_is_verified_once_per_request(
    service: ServiceFactory, party: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.auth import tokens

    calls = 0
    original = tokens.TokenVerifier.verify

    async def counting(self: tokens.TokenVerifier, token: str) -> tokens.Principal:
        nonlocal calls
        calls += 1
        return await original(self, token)

    monkeypatch.setattr(tokens.TokenVerifier, "verify", counting)
    async with service() as svc:
        response = await svc.http.get(
            f"/v1/parties/{party}/transactions", headers=svc.headers(party)
        )

    assert response.status_code == 200
    assert calls == 1


async def test_every_party_route_declares_its_429(service: ServiceFactory) -> None:
    async with service() as svc:
        paths = (await svc.http.get("/openapi.json")).json()["paths"]

    party_routes = {
        (method, path): operation
        for path, operations in paths.items()
        if path.startswith("/v1/parties/")
        for method, operation in operations.items()
    }
    assert party_routes
    for route, operation in party_routes.items():
        declared = operation["responses"].get("429")
        assert declared is not None, route
        assert "Retry-After" in declared["headers"], route
        assert "application/problem+json" in declared["content"], route
    assert "429" not in paths["/webhooks/bakkt"]["post"]["responses"]
