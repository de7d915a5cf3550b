"""Idempotency-Key: required, replayed, refused when reused for another request, 409 while in
flight, one Bakkt call for many duplicates, and a dead request's claim taken over and resumed."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.core.metrics import METRICS
from app.funding.schemas import DepositRequest
from app.funding.service import FundingService
from app.idempotency.service import fingerprint
from bakkt_sandbox.testing import RunningSandbox
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, key, link_account, with_key


@pytest.fixture
def headers(auth: TokenFactory, party: str) -> dict[str, str]:
    return auth(party)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polls the database and the sandbox
            await asyncio.sleep(0.01)


IDEMPOTENT_ROUTES = [
    ("POST", "/link-sessions", {}),
    ("POST", "/bank-accounts", {"processorToken": "processor-x"}),
    ("DELETE", f"/bank-accounts/{uuid.uuid4()}", None),
    ("POST", "/deposits", {"amount": "10.00"}),
    ("POST", "/withdrawals", {"method": "ACH", "amount": "10.00"}),
]
ROUTE_IDS = [f"{m} {p.split('/')[1]}" for m, p, _ in IDEMPOTENT_ROUTES]


@pytest.mark.parametrize(("method", "path", "body"), IDEMPOTENT_ROUTES, ids=ROUTE_IDS)
async def test_every_post_and_delete_requires_an_idempotency_key(
    api: httpx.AsyncClient,
    sql: Execute,
    party: str,
    headers: dict[str, str],
    method: str,
    path: str,
    body: dict[str, str] | None,
) -> None:
    response = await api.request(method, f"/v1/parties/{party}{path}", json=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_missing"
    rows = await sql("SELECT count(*) FROM parties WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 0


@pytest.mark.parametrize(
    "bad_key",
    ["short", "x" * 256, "tab\tinside-the-key", "clé-très-longue".encode()],
    ids=["too-short", "too-long", "control-char", "not-ascii"],
)
@pytest.mark.parametrize(("method", "path", "body"), IDEMPOTENT_ROUTES, ids=ROUTE_IDS)
async def test_an_idempotency_key_must_be_8_to_255_printable_ascii_characters(
    api: httpx.AsyncClient,
    party: str,
    headers: dict[str, str],
    method: str,
    path: str,
    body: dict[str, str] | None,
    bad_key: str | bytes,
) -> None:
    response = await api.request(
        method,
        f"/v1/parties/{party}{path}",
        json=body,
        headers=[*headers.items(), ("Idempotency-Key", bad_key)],
    )
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_invalid"


@pytest.fixture
async def linked(api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]) -> str:
    return await link_account(api, sql, party, headers)


async def test_the_same_key_and_request_replays_the_stored_answer_without_calling_bakkt(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    same = with_key(headers)
    url = f"/v1/parties/{party}/deposits"
    first = await api.post(url, json={"amount": "10"}, headers=same)
    # The same request in other words: equal amount, fields reordered, default spelled out.
    again = await api.post(url, json={"currency": "USD", "amount": "10.00"}, headers=same)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    [transfer] = await sandbox.transfers(party)
    assert transfer["requestCount"] == 1
    rows = await sql("SELECT count(*) FROM transactions WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 1


async def test_the_same_key_with_another_body_or_route_is_refused_with_422(
    api: httpx.AsyncClient,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    same = with_key(headers)
    url = f"/v1/parties/{party}"
    assert (await api.post(f"{url}/deposits", json={"amount": "10.00"}, headers=same)).is_success
    other_amount = await api.post(f"{url}/deposits", json={"amount": "11.00"}, headers=same)
    other_route = await api.post(
        f"{url}/withdrawals", json={"method": "ACH", "amount": "10.00"}, headers=same
    )
    for response in (other_amount, other_route):
        assert response.status_code == 422
        assert response.json()["code"] == "idempotency_key_reused"
    assert len(await sandbox.transfers(party)) == 1


async def test_keys_are_scoped_to_the_party(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    auth: TokenFactory,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    other = f"p-{uuid.uuid4().hex[:12]}"
    await link_account(api, sql, other, auth(other))
    shared = key()
    for who, token in ((party, headers), (other, auth(other))):
        response = await api.post(
            f"/v1/parties/{who}/deposits",
            json={"amount": "10.00"},
            headers={**token, "Idempotency-Key": shared},
        )
        assert response.status_code == 202
        assert "idempotent-replayed" not in response.headers
        assert len(await sandbox.transfers(who)) == 1


async def test_a_validation_failure_is_not_stored_so_the_fixed_request_may_reuse_the_key(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], linked: str
) -> None:
    same = with_key(headers)
    url = f"/v1/parties/{party}/deposits"
    bad = await api.post(url, json={"amount": "10.001"}, headers=same)
    assert bad.status_code == 422
    assert bad.json()["code"] == "validation_failed"
    fixed = await api.post(url, json={"amount": "10.00"}, headers=same)
    assert fixed.status_code == 202
    assert "idempotent-replayed" not in fixed.headers


async def test_a_refusal_before_anything_was_written_is_not_stored_either(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    same = with_key(headers)
    url = f"/v1/parties/{party}/deposits"
    refused = await api.post(url, json={"amount": "10.00"}, headers=same)
    assert refused.json()["code"] == "no_linked_bank_account"
    await link_account(api, sql, party, headers)
    accepted = await api.post(url, json={"amount": "10.00"}, headers=same)
    assert accepted.status_code == 202


async def test_bakkts_rejection_is_stored_and_replayed_even_after_the_cause_is_gone(
    api: httpx.AsyncClient,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    same = with_key(headers)
    url = f"/v1/parties/{party}/withdrawals"
    body = {"method": "ACH", "amount": "50.00"}
    first = await api.post(url, json=body, headers=same)
    assert first.json()["code"] == "insufficient_balance"
    await sandbox.credit(party, "100.00")
    replay = await api.post(url, json=body, headers=same)
    assert replay.status_code == 422
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    fresh = await api.post(url, json=body, headers=with_key(headers))
    assert fresh.status_code == 202


async def test_an_expired_key_is_a_new_key(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str], linked: str
) -> None:
    old = key()
    await sql(
        "INSERT INTO idempotency_keys (party_ref, key, request_method, request_path, fingerprint,"
        " recovery_point, response_status, response_body, expires_at) VALUES (:p, :k, 'POST',"
        " '/elsewhere', :f, 'finished', 200, '{}', clock_timestamp() - interval '1 day')",
        {"p": party, "k": old, "f": "0" * 64},
    )
    response = await api.post(
        f"/v1/parties/{party}/deposits",
        json={"amount": "10.00"},
        headers={**headers, "Idempotency-Key": old},
    )
    assert response.status_code == 202
    assert "idempotent-replayed" not in response.headers


async def test_a_claim_that_died_before_writing_its_intent_is_taken_over(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    dead = key()
    path = f"/v1/parties/{party}/deposits"
    await sql(
        "INSERT INTO idempotency_keys (party_ref, key, request_method, request_path, fingerprint,"
        " recovery_point, locked_until, expires_at) VALUES (:p, :k, 'POST', :path, :f, 'started',"
        " clock_timestamp() - interval '1 second', clock_timestamp() + interval '1 day')",
        {
            "p": party,
            "k": dead,
            "path": path,
            "f": fingerprint("POST", path, DepositRequest.model_validate({"amount": "10.00"})),
        },
    )
    response = await api.post(
        path, json={"amount": "10.00"}, headers={**headers, "Idempotency-Key": dead}
    )
    assert response.status_code == 202
    assert response.json()["status"] == "PENDING"
    assert len(await sandbox.transfers(party)) == 1


# --- concurrency (a real pool, committed data) ---------------------------------------------------


@pytest.fixture
async def live_linked(
    live_api: httpx.AsyncClient, live_sql: Execute, party: str, headers: dict[str, str]
) -> str:
    return await link_account(live_api, live_sql, party, headers)


async def test_fifty_concurrent_duplicates_make_exactly_one_bakkt_transfer(
    live_api: httpx.AsyncClient,
    live_sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    live_linked: str,
) -> None:
    # Bakkt answers slowly, so the duplicates arrive while the first is still in flight.
    await sandbox.set_fault("transferFiatCurrency", "latency", latency_ms=300)
    same = with_key(headers)
    responses = await asyncio.gather(
        *(
            live_api.post(f"/v1/parties/{party}/deposits", json={"amount": "10.00"}, headers=same)
            for _ in range(50)
        )
    )
    by_status = Counter(r.status_code for r in responses)
    assert set(by_status) <= {202, 409}, by_status
    originals = [
        r for r in responses if r.status_code == 202 and "idempotent-replayed" not in r.headers
    ]
    assert len(originals) == 1
    for response in responses:
        if response.status_code == 409:
            assert response.json()["code"] == "idempotency_request_in_progress"
            assert response.headers["retry-after"] == "1"
        else:
            assert response.json() == originals[0].json()
    transfers = await sandbox.transfers(party)
    assert len(transfers) == 1
    assert transfers[0]["requestCount"] == 1
    [[rows]] = await live_sql(
        "SELECT count(*) FROM transactions WHERE party_ref = :p", {"p": party}
    )
    assert rows == 1


async def test_a_duplicate_while_the_first_is_in_flight_gets_409_then_the_replay(
    live_api: httpx.AsyncClient,
    live_sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    live_linked: str,
) -> None:
    await sandbox.set_fault("transferFiatCurrency", "latency", latency_ms=500)
    same = with_key(headers)
    url = f"/v1/parties/{party}/deposits"
    first = asyncio.create_task(live_api.post(url, json={"amount": "10.00"}, headers=same))

    async def intent_written() -> bool:
        rows = await live_sql(
            "SELECT count(*) FROM transactions WHERE party_ref = :p", {"p": party}
        )
        return bool(rows[0][0])

    await eventually(intent_written)
    refused = METRICS.value("idempotency_rejections_total", code="idempotency_request_in_progress")
    in_flight = await live_api.post(url, json={"amount": "10.00"}, headers=same)
    assert in_flight.status_code == 409
    assert in_flight.json()["code"] == "idempotency_request_in_progress"
    assert in_flight.headers["retry-after"] == "1"
    # Counted (the process's metrics: other tests count there too, hence the difference).
    assert (
        METRICS.value("idempotency_rejections_total", code="idempotency_request_in_progress")
        == refused + 1
    )
    done = await first
    assert done.status_code == 202
    replay = await live_api.post(url, json={"amount": "10.00"}, headers=same)
    assert replay.json() == done.json()
    assert replay.headers["idempotent-replayed"] == "true"


async def test_a_request_that_died_mid_call_is_resumed_with_the_same_bakkt_key(
    live_api: httpx.AsyncClient,
    live_sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    live_linked: str,
) -> None:
    # Bakkt records the transfer, then never answers: our process "dies" waiting.
    await sandbox.set_fault(
        "transferFiatCurrency", "timeout", phase="after", count=1, hold_seconds=30
    )
    same = with_key(headers)
    url = f"/v1/parties/{party}/deposits"
    dying = asyncio.create_task(live_api.post(url, json={"amount": "10.00"}, headers=same))

    async def bakkt_has_it() -> bool:
        return len(await sandbox.transfers(party)) == 1

    await eventually(bakkt_has_it)
    dying.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await dying
    [(txn_id, status, bakkt_key)] = await live_sql(
        "SELECT id, status, bakkt_idempotency_key FROM transactions WHERE party_ref = :p",
        {"p": party},
    )
    assert status == "SUBMITTING"

    still_leased = await live_api.post(url, json={"amount": "10.00"}, headers=same)
    assert still_leased.status_code == 409
    # The lease of the dead process runs out.
    await live_sql(
        "UPDATE idempotency_keys SET locked_until = clock_timestamp() - interval '1 second' "
        "WHERE party_ref = :p AND request_path = :path",
        {"p": party, "path": url},
    )
    resumed = await live_api.post(url, json={"amount": "10.00"}, headers=same)
    assert resumed.status_code == 202
    assert resumed.json()["id"] == str(txn_id)
    assert resumed.json()["status"] == "PENDING"
    [transfer] = await sandbox.transfers(party)
    assert transfer["idempotencyKey"] == bakkt_key
    assert transfer["requestCount"] == 2
    [(attempts, next_check)] = await live_sql(
        "SELECT submit_attempts, next_check_at FROM transactions WHERE id = :id", {"id": txn_id}
    )
    assert attempts == 2
    assert next_check > datetime.now(UTC) + timedelta(seconds=30)


async def test_an_unexpected_failure_before_the_intent_frees_the_key_at_once(
    api: httpx.AsyncClient,
    sandbox: RunningSandbox,
    monkeypatch: pytest.MonkeyPatch,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the database hiccupped")

    monkeypatch.setattr(FundingService, "_check_limits", broken)
    same = with_key(headers)
    url = f"/v1/parties/{party}/deposits"
    with pytest.raises(RuntimeError):
        await api.post(url, json={"amount": "10.00"}, headers=same)
    monkeypatch.undo()
    retried = await api.post(url, json={"amount": "10.00"}, headers=same)
    assert retried.status_code == 202
    assert len(await sandbox.transfers(party)) == 1


async def test_an_unexpected_failure_after_the_intent_lets_the_retry_resume_at_once(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    monkeypatch: pytest.MonkeyPatch,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug between the intent and the call")

    monkeypatch.setattr(FundingService, "_submit", broken)
    same = with_key(headers)
    url = f"/v1/parties/{party}/deposits"
    with pytest.raises(RuntimeError):
        await api.post(url, json={"amount": "10.00"}, headers=same)
    monkeypatch.undo()
    [[txn_id]] = (await sql("SELECT id FROM transactions WHERE party_ref = :p", {"p": party})).all()
    resumed = await api.post(url, json={"amount": "10.00"}, headers=same)
    assert resumed.status_code == 202
    assert resumed.json()["id"] == str(txn_id)
    assert resumed.json()["status"] == "PENDING"
    assert len(await sandbox.transfers(party)) == 1
