"""How many round trips to Postgres each consumer request makes, pinned (issue 11: every
statement, BEGIN and COMMIT is a turn of the event loop and of Postgres, and the hot paths
were paying for ones they did not need). A change that adds one fails here and says so;
docs/performance.md has the table."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from app.funding import service as funding_service
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


async def test_a_deposit_makes_seven_round_trips_and_its_replay_one(
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
    # to it, its history row and its `transaction.created` event); the outcome, one statement
    # in autocommit (the move, applied only while the row is as the intent wrote it, its history
    # row, its `transaction.pending` event and the key's answer). Issue 11: the account, the
    # history rows, the events, the key's answer and the outcome's BEGIN, lock and COMMIT were
    # nine statements of their own (16 in all).
    assert deposit == Counter({"WITH": 3, "BEGIN": 1, "SELECT": 2, "COMMIT": 1}), deposit
    assert _total(deposit) == 7
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


async def test_an_outcome_whose_row_changed_meanwhile_is_judged_again_under_the_lock(
    live_api: httpx.AsyncClient,
    live_sql: Execute,
    round_trips: RoundTrips,
    monkeypatch: pytest.MonkeyPatch,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    url = f"/v1/parties/{party}/deposits"
    warm = await live_api.post(url, json={"amount": "10.00"}, headers=with_key(headers))
    assert warm.status_code == 202
    submit = funding_service._submit

    async def touched(*args: Any, **kwargs: Any) -> Any:
        # While Bakkt is called, another writer (recovery, say) changes the row: the outcome's
        # unlocked statement must not apply a move judged on the row as it was.
        await live_sql(
            "UPDATE transactions SET check_attempts = check_attempts + 1 "
            "WHERE party_ref = :p AND status = 'SUBMITTING'",
            {"p": party},
        )
        return await submit(*args, **kwargs)

    monkeypatch.setattr(funding_service, "_submit", touched)
    with round_trips.measure() as deposit:
        made = await live_api.post(url, json={"amount": "10.00"}, headers=with_key(headers))
    assert made.status_code == 202
    assert made.json()["status"] == "PENDING"
    # The unlocked statement that found the row changed and wrote nothing, then the outcome
    # under the row lock as before: BEGIN, the lock, one statement, COMMIT. (The touch itself
    # is one BEGIN, UPDATE and COMMIT.)
    touch = Counter({"BEGIN": 1, "UPDATE": 1, "COMMIT": 1})
    assert deposit - touch == Counter({"WITH": 4, "BEGIN": 2, "SELECT": 3, "COMMIT": 2}), deposit
    rows = await live_sql(
        "SELECT t.status, t.check_attempts, k.recovery_point, k.response_body->>'status' "
        "FROM transactions t JOIN idempotency_keys k ON k.transaction_id = t.id "
        "WHERE t.id = :id",
        {"id": made.json()["id"]},
    )
    assert [tuple(r) for r in rows] == [("PENDING", 1, "finished", "PENDING")]
    history = await live_sql(
        "SELECT from_status, to_status, applied FROM transaction_history "
        "WHERE transaction_id = :id ORDER BY id",
        {"id": made.json()["id"]},
    )
    assert [tuple(r) for r in history] == [
        (None, "SUBMITTING", True),
        ("SUBMITTING", "PENDING", True),
    ]
    events = await live_sql(
        "SELECT type FROM events WHERE subject_id = :id ORDER BY local_id",
        {"id": made.json()["id"]},
    )
    assert [r[0] for r in events] == ["transaction.created", "transaction.pending"]
