"""Deposits and withdrawals through HTTP, against Postgres and the sandbox: what is written, what
Bakkt receives, and what the consumer gets for each of Bakkt's answers."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from bakkt_sandbox.testing import RunningSandbox
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, insert_linked_account, link_account, with_key

TRANSACTION_FIELDS = {
    "id",
    "type",
    "method",
    "status",
    "amount",
    "currency",
    "reasonCode",
    "createdAt",
    "updatedAt",
}
WIRE = {
    "routingNumber": "021000021",
    "accountNumber": "000123456789",
    "bankName": "Chase Manhattan",
    "bankAddress": "270 Park Ave, New York, NY",
    "swiftCode": "CHASUS33",
}


async def row(sql: Execute, transaction_id: str) -> Any:
    result = await sql("SELECT * FROM transactions WHERE id = :id", {"id": transaction_id})
    return result.mappings().one()


async def history(sql: Execute, transaction_id: str) -> list[tuple[str | None, str, str, bool]]:
    result = await sql(
        "SELECT from_status, to_status, source, applied FROM transaction_history "
        "WHERE transaction_id = :id ORDER BY id",
        {"id": transaction_id},
    )
    return [tuple(r) for r in result.all()]


async def count(sql: Execute, table: str, party_ref: str) -> int:
    result = await sql(f"SELECT count(*) FROM {table} WHERE party_ref = :p", {"p": party_ref})  # noqa: S608
    return int(result.scalar_one())


@pytest.fixture
def headers(auth: TokenFactory, party: str) -> dict[str, str]:
    return auth(party)


@pytest.fixture
async def linked(api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]) -> str:
    return await link_account(api, sql, party, headers)


async def deposit(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], amount: str = "25.00", **extra: Any
) -> httpx.Response:
    return await api.post(
        f"/v1/parties/{party}/deposits", json={"amount": amount, **extra}, headers=with_key(headers)
    )


async def withdraw(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], body: dict[str, Any]
) -> httpx.Response:
    return await api.post(f"/v1/parties/{party}/withdrawals", json=body, headers=with_key(headers))


# --- accepted -----------------------------------------------------------------------------------


async def test_an_accepted_deposit_answers_202_pending_and_reaches_bakkt_once_with_derived_refs(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    response = await deposit(api, party, headers, "25.10")
    assert response.status_code == 202
    body = response.json()
    assert set(body) == TRANSACTION_FIELDS
    assert body["type"] == "DEPOSIT"
    assert body["method"] == "ACH"
    assert body["status"] == "PENDING"
    assert body["amount"] == "25.10"
    assert body["currency"] == "USD"
    assert "idempotent-replayed" not in response.headers

    stored = await row(sql, body["id"])
    assert stored["amount_cents"] == 2510
    assert stored["bakkt_ref"] == body["id"]
    assert str(stored["bank_account_id"]) == linked
    assert stored["next_check_at"] is not None

    [transfer] = await sandbox.transfers(party)
    assert transfer["partnerTransactionRef"] == body["id"]
    assert transfer["idempotencyKey"] == stored["bakkt_idempotency_key"]
    assert transfer["amount"] == 25.10
    assert transfer["fiatTransactType"] == "DEPOSIT"
    assert transfer["instrumentType"] == "ACH"
    assert transfer["requestCount"] == 1
    assert await history(sql, body["id"]) == [
        (None, "SUBMITTING", "api", True),
        ("SUBMITTING", "PENDING", "api", True),
    ]


async def test_a_deposit_may_name_its_linked_bank_account(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str], linked: str
) -> None:
    response = await deposit(api, party, headers, bankAccountId=linked)
    assert response.status_code == 202
    assert str((await row(sql, response.json()["id"]))["bank_account_id"]) == linked


async def test_an_ach_withdrawal_is_accepted_when_bakkt_holds_the_balance(
    api: httpx.AsyncClient,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    await sandbox.credit(party, "100.00")
    response = await withdraw(api, party, headers, {"method": "ACH", "amount": "40.00"})
    assert response.status_code == 202
    assert response.json()["type"] == "WITHDRAWAL"
    assert response.json()["status"] == "PENDING"
    [transfer] = await sandbox.transfers(party)
    assert (transfer["fiatTransactType"], transfer["amount"]) == ("WITHDRAW", 40.0)


async def test_a_wire_withdrawal_keeps_only_the_bank_name_and_last_four_digits(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    await sandbox.credit(party, "5000.00")
    response = await withdraw(
        api, party, headers, {"method": "WIRE", "amount": "1500.00", "destination": WIRE}
    )
    assert response.status_code == 202, response.text
    assert response.json()["method"] == "WIRE"
    assert WIRE["accountNumber"] not in response.text
    stored = await row(sql, response.json()["id"])
    assert stored["wire_bank_name"] == "Chase Manhattan"
    assert stored["wire_account_mask"] == "6789"
    assert stored["bank_account_id"] is None
    everything = await sql(
        "SELECT (SELECT string_agg(t::text, '') FROM transactions t WHERE party_ref = :p)"
        " || (SELECT string_agg(k::text, '') FROM idempotency_keys k WHERE party_ref = :p)",
        {"p": party},
    )
    assert WIRE["accountNumber"] not in everything.scalar_one()
    [transfer] = await sandbox.transfers(party)
    assert transfer["instrumentType"] == "WIRE"


# --- Bakkt says no ------------------------------------------------------------------------------


async def test_bakkts_rejection_fails_the_transaction_and_maps_to_a_clear_4xx(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    response = await withdraw(api, party, headers, {"method": "ACH", "amount": "40.00"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "insufficient_balance"
    stored = await row(sql, problem["transactionId"])
    assert stored["status"] == "FAILED"
    assert stored["reason_code"] == "insufficient_balance"
    assert stored["next_check_at"] is None
    assert (await history(sql, problem["transactionId"]))[-1] == (
        "SUBMITTING",
        "FAILED",
        "api",
        True,
    )
    assert await sandbox.transfers(party) == []
    detail = await api.get(
        f"/v1/parties/{party}/transactions/{problem['transactionId']}", headers=headers
    )
    assert detail.json()["status"] == "FAILED"
    assert detail.json()["reasonCode"] == "insufficient_balance"


async def test_an_ach_withdrawal_below_bakkts_minimum_names_the_minimum_and_writes_nothing(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    await sandbox.credit(party, "100.00")
    before = await count(sql, "transactions", party)
    response = await withdraw(api, party, headers, {"method": "ACH", "amount": "9.99"})
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "below_minimum"
    assert (problem["minimum"], problem["currency"]) == ("10.00", "USD")
    assert "10.00 USD" in problem["detail"]
    assert "transactionId" not in problem
    assert await count(sql, "transactions", party) == before
    assert await sandbox.transfers(party) == []
    listed = await api.get(f"/v1/parties/{party}/transactions", headers=headers)
    assert listed.json()["items"] == []
    at_minimum = await withdraw(api, party, headers, {"method": "ACH", "amount": "10.00"})
    assert at_minimum.status_code == 202, at_minimum.text


async def test_a_withdrawal_without_a_method_is_an_ach_withdrawal_like_a_deposit(
    api: httpx.AsyncClient,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    await sandbox.credit(party, "100.00")
    response = await withdraw(api, party, headers, {"amount": "20.00"})
    assert response.status_code == 202, response.text
    assert response.json()["method"] == "ACH"
    [transfer] = await sandbox.transfers(party)
    assert transfer["instrumentType"] == "ACH"


async def test_a_refused_withdrawal_stays_in_the_consumers_list_as_failed_with_its_reason(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], linked: str
) -> None:
    refused = await withdraw(api, party, headers, {"amount": "40.00"})
    assert refused.json()["code"] == "insufficient_balance"
    listed = await api.get(f"/v1/parties/{party}/transactions", headers=headers)
    [item] = listed.json()["items"]
    assert (item["id"], item["status"], item["reasonCode"]) == (
        refused.json()["transactionId"],
        "FAILED",
        "insufficient_balance",
    )
    only_moving = await api.get(
        f"/v1/parties/{party}/transactions",
        params={"status": ["PENDING", "COMPLETED"]},
        headers=headers,
    )
    assert only_moving.json()["items"] == []


async def test_a_party_that_bakkt_knows_as_suspended_gets_403_from_bakkts_answer(
    api: httpx.AsyncClient, sql: Execute, auth: TokenFactory
) -> None:
    # The sandbox creates "suspended-..." parties suspended; our copy has not heard of it yet.
    party = f"suspended-{uuid.uuid4().hex[:8]}"
    await insert_linked_account(sql, party)
    response = await deposit(api, party, auth(party))
    assert response.status_code == 403
    assert response.json()["code"] == "party_suspended"
    assert (await row(sql, response.json()["transactionId"]))["status"] == "FAILED"


# --- our own gates, before Bakkt is called ------------------------------------------------------


async def set_party(sql: Execute, party: str, status: str, reason: str | None = None) -> None:
    await sql(
        "INSERT INTO parties (party_ref, status, status_reason) VALUES (:p, :s, :r) "
        "ON CONFLICT (party_ref) DO UPDATE SET status = :s, status_reason = :r",
        {"p": party, "s": status, "r": reason},
    )


async def test_a_suspended_party_may_not_deposit_and_bakkt_is_not_called(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    await set_party(sql, party, "SUSPENDED", "COMPLIANCE_LOCKED")
    response = await deposit(api, party, headers)
    assert response.status_code == 403
    problem = response.json()
    assert problem["code"] == "party_suspended"
    assert (problem["partyStatus"], problem["reasonCode"]) == ("SUSPENDED", "COMPLIANCE_LOCKED")
    assert await count(sql, "transactions", party) == 0
    deposit_keys = await sql(
        "SELECT count(*) FROM idempotency_keys WHERE party_ref = :p AND request_path LIKE "
        "'%/deposits'",
        {"p": party},
    )
    assert deposit_keys.scalar_one() == 0  # released: the consumer may retry with the same key
    assert await sandbox.transfers(party) == []


@pytest.mark.parametrize("status", ["LIQUIDATED", "INACTIVE", "UNDER_REVIEW", "CLOSED"])
async def test_only_an_active_party_may_deposit(
    api: httpx.AsyncClient,
    sql: Execute,
    party: str,
    headers: dict[str, str],
    linked: str,
    status: str,
) -> None:
    await set_party(sql, party, status)
    response = await deposit(api, party, headers)
    assert response.status_code == 403
    assert response.json()["code"] == "party_not_active"
    assert response.json()["partyStatus"] == status
    assert await count(sql, "transactions", party) == 0


async def test_a_liquidated_party_may_still_withdraw(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    await sandbox.credit(party, "100.00")
    await set_party(sql, party, "LIQUIDATED", "LIQUIDATE_ACCOUNT")
    response = await withdraw(api, party, headers, {"method": "ACH", "amount": "100.00"})
    assert response.status_code == 202
    assert response.json()["status"] == "PENDING"


@pytest.mark.parametrize("status", ["INACTIVE", "SUSPENDED", "CLOSED"])
async def test_other_inactive_parties_may_not_withdraw(
    api: httpx.AsyncClient,
    sql: Execute,
    party: str,
    headers: dict[str, str],
    linked: str,
    status: str,
) -> None:
    await set_party(sql, party, status)
    response = await withdraw(api, party, headers, {"method": "ACH", "amount": "10.00"})
    assert response.status_code == 403
    assert response.json()["code"] in {"party_not_active", "party_suspended"}
    assert await count(sql, "transactions", party) == 0


# --- ACH needs a usable linked account ----------------------------------------------------------


async def test_ach_without_a_linked_account_answers_409_no_linked_bank_account(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    response = await deposit(api, party, headers)
    assert response.status_code == 409
    assert response.json()["code"] == "no_linked_bank_account"
    assert await count(sql, "transactions", party) == 0


async def test_a_transfer_while_the_only_account_is_pending_answers_link_pending(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    linking = await api.post(
        f"/v1/parties/{party}/bank-accounts",
        json={"processorToken": "processor-pending"},
        headers=with_key(headers),
    )
    account_id = linking.json()["id"]
    implicit = await deposit(api, party, headers)
    explicit = await deposit(api, party, headers, bankAccountId=account_id)
    withdrawal = await api.post(
        f"/v1/parties/{party}/withdrawals",
        json={"method": "ACH", "amount": "10.00"},
        headers=with_key(headers),
    )
    for response in (implicit, explicit, withdrawal):
        assert response.status_code == 409
        assert response.json()["code"] == "bank_account_link_pending"
        assert response.json()["bankAccountId"] == account_id
        assert int(response.headers["retry-after"]) >= 1
    rows = await sql("SELECT count(*) FROM transactions WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 0


async def test_a_disabled_account_is_refused_with_bank_account_disabled(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str], linked: str
) -> None:
    await sql(
        "UPDATE bank_accounts SET status = 'DISABLED', reason_code = 'R02' WHERE id = :id",
        {"id": linked},
    )
    for response in (
        await deposit(api, party, headers),
        await withdraw(api, party, headers, {"method": "ACH", "amount": "10.00"}),
    ):
        assert response.status_code == 409
        assert response.json()["code"] == "bank_account_disabled"
        assert response.json()["reasonCode"] == "R02"
    assert await count(sql, "transactions", party) == 0


async def test_an_account_under_review_takes_no_deposits_but_may_be_paid_into(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    await sql("UPDATE bank_accounts SET needs_review = true WHERE id = :id", {"id": linked})
    refused = await deposit(api, party, headers)
    assert refused.status_code == 409
    assert refused.json()["code"] == "bank_account_under_review"
    await sandbox.credit(party, "50.00")
    paid = await withdraw(api, party, headers, {"method": "ACH", "amount": "50.00"})
    assert paid.status_code == 202


async def test_a_bank_account_id_of_another_party_is_unknown(
    api: httpx.AsyncClient, sql: Execute, auth: TokenFactory, party: str, headers: dict[str, str]
) -> None:
    other = f"p-{uuid.uuid4().hex[:12]}"
    others_account = await link_account(api, sql, other, auth(other))
    response = await deposit(api, party, headers, bankAccountId=others_account)
    assert response.status_code == 422
    assert response.json()["code"] == "unknown_bank_account"


# --- Bakkt does not answer ----------------------------------------------------------------------


async def test_bakkt_failing_with_5xx_leaves_the_transaction_unknown_and_answers_202(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    await sandbox.set_fault("transferFiatCurrency", "error", status=503)
    before = datetime.now(UTC)
    response = await deposit(api, party, headers)
    assert response.status_code == 202
    assert response.json()["status"] == "UNKNOWN"
    stored = await row(sql, response.json()["id"])
    assert stored["status"] == "UNKNOWN"
    assert before < stored["next_check_at"] < before + timedelta(seconds=30)
    assert await sandbox.transfers(party) == []


async def test_an_answer_lost_after_bakkt_executed_it_is_unknown_and_the_ledger_has_it_once(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    await sandbox.set_fault("transferFiatCurrency", "error", status=500, phase="after")
    response = await deposit(api, party, headers)
    assert response.status_code == 202
    assert response.json()["status"] == "UNKNOWN"
    [transfer] = await sandbox.transfers(party)
    stored = await row(sql, response.json()["id"])
    assert transfer["idempotencyKey"] == stored["bakkt_idempotency_key"]
    assert transfer["requestCount"] == 2  # both attempts, one key, one transfer


async def test_a_dropped_answer_is_resent_with_the_same_key_and_counts_as_accepted(
    api: httpx.AsyncClient,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    await sandbox.set_fault("transferFiatCurrency", "accept_then_drop", count=1)
    response = await deposit(api, party, headers)
    assert response.status_code == 202
    assert response.json()["status"] == "PENDING"
    [transfer] = await sandbox.transfers(party)
    assert transfer["requestCount"] == 2


async def test_a_rate_limited_transfer_is_unknown_and_checked_after_bakkts_retry_after(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
) -> None:
    await sandbox.set_fault("transferFiatCurrency", "rate_limit", retry_after=120)
    before = datetime.now(UTC)
    response = await deposit(api, party, headers)
    assert response.status_code == 202
    assert response.json()["status"] == "UNKNOWN"
    stored = await row(sql, response.json()["id"])
    assert stored["next_check_at"] >= before + timedelta(seconds=119)
    assert await sandbox.transfers(party) == []


async def test_bakkt_unreachable_leaves_the_transaction_unknown_for_recovery(
    api_with: Any, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    await insert_linked_account(sql, party)
    nobody_listens = await api_with(bakkt_base_url="http://127.0.0.1:9")
    response = await deposit(nobody_listens, party, headers)
    assert response.status_code == 202
    assert response.json()["status"] == "UNKNOWN"
    notes = await sql(
        "SELECT note FROM transaction_history WHERE transaction_id = :id ORDER BY id",
        {"id": response.json()["id"]},
    )
    assert "not sent" in notes.all()[-1][0]


async def test_a_rejection_that_is_our_set_ups_fault_answers_502_and_is_not_stored(
    api_with: Any, sql: Execute, sandbox: RunningSandbox, party: str, headers: dict[str, str]
) -> None:
    await insert_linked_account(sql, party)
    misconfigured = await api_with(bakkt_partner_id=str(uuid.uuid4()))
    same = with_key(headers)
    url = f"/v1/parties/{party}/deposits"
    response = await misconfigured.post(url, json={"amount": "10.00"}, headers=same)
    assert response.status_code == 502
    assert response.json()["code"] == "bakkt_misconfigured"
    assert (await row(sql, response.json()["transactionId"]))["status"] == "FAILED"
    keys = await sql("SELECT count(*) FROM idempotency_keys WHERE party_ref = :p", {"p": party})
    assert keys.scalar_one() == 0  # fixed set-up, same key: a new attempt
    assert await sandbox.transfers(party) == []


async def test_open_circuit_answers_503_at_once_and_writes_nothing(
    api_with: Any, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    api = await api_with(
        bakkt_base_url=f"http://127.0.0.1:{closed_port}",
        bakkt_breaker_failures=1,
        bakkt_breaker_cooldown=60.0,
    )
    await insert_linked_account(sql, party)
    first = await deposit(api, party, headers)
    assert first.status_code == 202  # Bakkt unreachable: the intent stays, outcome settled later
    before = await count(sql, "transactions", party)

    same_key = with_key(headers)
    refused = await api.post(
        f"/v1/parties/{party}/deposits", json={"amount": "25.00"}, headers=same_key
    )
    again = await api.post(
        f"/v1/parties/{party}/deposits", json={"amount": "25.00"}, headers=same_key
    )

    assert refused.status_code == 503
    assert refused.json()["code"] == "bakkt_unavailable"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert again.status_code == 503, "the refused key must stay usable, not replay or 409"
    assert await count(sql, "transactions", party) == before
