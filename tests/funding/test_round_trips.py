"""How many round trips to Postgres each consumer request makes, pinned (issue 11: every
statement, BEGIN and COMMIT is a turn of the event loop and of Postgres, and the hot paths
were paying for ones they did not need). A change that adds one fails here and says so;
docs/performance.md has the table."""

from __future__ import annotations

import uuid
from collections import Counter

import httpx
import pytest

from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, link_account, with_key
from tests.round_trips import RoundTrips, round_trips

__all__ = ["round_trips"]


@pytest.fixture
def headers(auth: TokenFactory, party: str) -> dict[str, str]:
    return auth(party)


@pytest.fixture
async def linked(
    live_api: httpx.AsyncClient, live_sql: Execute, party: str, headers: dict[str, str]
) -> str:
    return await link_account(live_api, live_sql, party, headers)


def _total(seen: Counter[str]) -> int:
    return sum(seen.values())


async def test_a_deposit_makes_ten_round_trips_and_its_replay_one(
    live_api: httpx.AsyncClient,
    round_trips: RoundTrips,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    url = f"/v1/parties/{party}/deposits"
    warm = await live_api.post(url, json={"amount": "10.00"}, headers=with_key(headers))
    assert warm.status_code == 202
    same = with_key(headers)
    with round_trips.measure() as deposit:
        first = await live_api.post(url, json={"amount": "10.00"}, headers=same)
    assert first.status_code == 202
    with round_trips.measure() as replay:
        again = await live_api.post(url, json={"amount": "10.00"}, headers=same)
    assert again.headers["idempotent-replayed"] == "true"
    # The claim, one statement in autocommit; the intent (the party's lock, then its current
    # account with its limits' sums, then one statement: the transaction with the key's pointer
    # to it, its history row and its `transaction.created` event); the outcome (the
    # transaction's lock, then one statement: the move, its history row, its
    # `transaction.pending` event and the key's answer). Issue 11: the account, the history
    # rows, the events and the key's answer were six statements of their own (16 in all).
    assert deposit == Counter({"WITH": 3, "BEGIN": 2, "SELECT": 3, "COMMIT": 2}), deposit
    assert _total(deposit) == 10
    assert replay == Counter({"WITH": 1}), replay


async def test_each_read_is_one_round_trip(
    live_api: httpx.AsyncClient,
    round_trips: RoundTrips,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    made = await live_api.post(
        f"/v1/parties/{party}/deposits", json={"amount": "10.00"}, headers=with_key(headers)
    )
    base = f"/v1/parties/{party}"
    paths = [
        f"{base}/transactions",
        f"{base}/transactions/{made.json()['id']}",
        f"{base}/bank-accounts",
        f"{base}/bank-accounts/{linked}",
    ]
    for path in paths:
        assert (await live_api.get(path, headers=headers)).status_code == 200
        with round_trips.measure() as seen:
            assert (await live_api.get(path, headers=headers)).status_code == 200
        assert seen == Counter({"SELECT": 1}), (path, seen)
    with round_trips.measure() as seen:
        assert (await live_api.get(base, headers=headers)).status_code == 200
    # The party and its current account.
    assert seen == Counter({"SELECT": 2}), seen


async def test_an_unknown_transaction_is_one_round_trip_too(
    live_api: httpx.AsyncClient, round_trips: RoundTrips, party: str, headers: dict[str, str]
) -> None:
    path = f"/v1/parties/{party}/transactions/{uuid.uuid4()}"
    assert (await live_api.get(path, headers=headers)).status_code == 404
    with round_trips.measure() as seen:
        assert (await live_api.get(path, headers=headers)).status_code == 404
    assert seen == Counter({"SELECT": 1})
