"""Per-party limits by direction: per transaction, per rolling day, per rolling 30 days, checked
under the party's row lock so that concurrent requests cannot overshoot."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from bakkt_sandbox.testing import RunningSandbox
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, link_account, with_key


@pytest.fixture
def headers(auth: TokenFactory, party: str) -> dict[str, str]:
    return auth(party)


@pytest.fixture
async def linked(api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]) -> str:
    return await link_account(api, sql, party, headers)


async def set_limits(
    sql: Execute,
    party: str,
    direction: str,
    *,
    per_tx: int | None = None,
    per_day: int | None = None,
    per_30: int | None = None,
) -> None:
    await sql(
        "INSERT INTO party_limits (party_ref, direction, per_transaction_cents, per_day_cents,"
        " per_30_days_cents) VALUES (:p, :d, :t, :day, :m)",
        {"p": party, "d": direction, "t": per_tx, "day": per_day, "m": per_30},
    )


async def past_transaction(
    sql: Execute,
    party: str,
    cents: int,
    age: timedelta,
    *,
    status: str = "COMPLETED",
    kind: str = "DEPOSIT",
    origin: str = "PARTNER",
) -> None:
    txn_id = str(uuid.uuid4())
    await sql(
        "INSERT INTO transactions (id, party_ref, type, method, origin, status, amount_cents,"
        " currency, bakkt_ref, created_at, updated_at) VALUES (:id, :p, :kind, 'ACH',"
        " :origin, :status, :cents, 'USD', :ref, :at, :at)",
        {
            "id": txn_id,
            "ref": txn_id,
            "p": party,
            "kind": kind,
            "origin": origin,
            "status": status,
            "cents": cents,
            "at": datetime.now(UTC) - age,
        },
    )


async def deposit(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], amount: str
) -> httpx.Response:
    return await api.post(
        f"/v1/parties/{party}/deposits", json={"amount": amount}, headers=with_key(headers)
    )


async def test_the_default_per_transaction_limit_refuses_before_anything_is_written(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    response = await deposit(api, party, headers, "25000.01")  # default: 25,000 USD
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "limit_exceeded"
    assert (problem["limit"], problem["limitAmount"]) == ("perTransaction", "25000.00")
    rows = await sql("SELECT count(*) FROM transactions WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 0
    assert await sandbox.transfers(party) == []
    assert (await deposit(api, party, headers, "25000.00")).status_code == 202


async def test_a_partys_own_daily_limit_counts_what_it_already_moved_today(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str], linked: str
) -> None:
    await set_limits(sql, party, "DEPOSIT", per_day=5000)
    assert (await deposit(api, party, headers, "30.00")).status_code == 202
    refused = await deposit(api, party, headers, "30.00")
    assert refused.status_code == 422
    assert (refused.json()["limit"], refused.json()["available"]) == ("perDay", "20.00")
    assert (await deposit(api, party, headers, "20.00")).status_code == 202


async def test_transactions_that_moved_no_money_do_not_count(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str], linked: str
) -> None:
    await set_limits(sql, party, "DEPOSIT", per_day=5000)
    for status in ("FAILED", "DECLINED", "CANCELLED"):
        await past_transaction(sql, party, 5000, timedelta(hours=1), status=status)
    await past_transaction(sql, party, 1000, timedelta(hours=1), status="RETURNED")
    # An inbound wire is Bakkt's doing, not a request of ours: it does not count either.
    await past_transaction(sql, party, 5000, timedelta(hours=1), origin="BAKKT", kind="DEPOSIT")
    assert (await deposit(api, party, headers, "40.00")).status_code == 202
    assert (await deposit(api, party, headers, "0.01")).json()["code"] == "limit_exceeded"


async def test_the_windows_roll_a_day_and_thirty_days_back(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str], linked: str
) -> None:
    await set_limits(sql, party, "DEPOSIT", per_day=10000, per_30=20000)
    await past_transaction(sql, party, 9000, timedelta(hours=25))  # counts for 30 days only
    await past_transaction(sql, party, 9000, timedelta(days=10))  # 30 days only
    await past_transaction(sql, party, 9000, timedelta(days=31))  # counts for nothing
    assert (await deposit(api, party, headers, "20.00")).status_code == 202
    refused = await deposit(api, party, headers, "0.01")
    assert refused.json()["limit"] == "per30Days"
    assert refused.json()["available"] == "0.00"


async def test_deposit_and_withdrawal_limits_are_separate(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    await set_limits(sql, party, "DEPOSIT", per_day=1000)
    await set_limits(sql, party, "WITHDRAWAL", per_tx=2000)
    await sandbox.credit(party, "100.00")
    assert (await deposit(api, party, headers, "10.00")).status_code == 202
    too_big = await api.post(
        f"/v1/parties/{party}/withdrawals",
        json={"method": "ACH", "amount": "20.01"},
        headers=with_key(headers),
    )
    assert too_big.json()["limit"] == "perTransaction"
    fine = await api.post(
        f"/v1/parties/{party}/withdrawals",
        json={"method": "ACH", "amount": "20.00"},
        headers=with_key(headers),
    )
    assert fine.status_code == 202


async def test_twenty_concurrent_deposits_never_exceed_the_daily_limit(
    live_api: httpx.AsyncClient,
    live_sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    await link_account(live_api, live_sql, party, headers)
    await set_limits(live_sql, party, "DEPOSIT", per_day=10000)  # 100.00 USD
    responses = await asyncio.gather(
        *(deposit(live_api, party, headers, "15.00") for _ in range(20))
    )
    by_code = Counter(
        r.status_code if r.status_code == 202 else r.json()["code"] for r in responses
    )
    assert by_code == {202: 6, "limit_exceeded": 14}
    accepted = sum(Decimal(r.json()["amount"]) for r in responses if r.status_code == 202)
    assert accepted == Decimal("90.00")
    at_bakkt = sum(Decimal(str(t["amount"])) for t in await sandbox.transfers(party))
    assert at_bakkt == accepted <= Decimal("100.00")
    [[in_db]] = await live_sql(
        "SELECT sum(amount_cents) FROM transactions WHERE party_ref = :p", {"p": party}
    )
    assert in_db == 9000
