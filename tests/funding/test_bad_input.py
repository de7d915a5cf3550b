"""Bad input gets a 4xx with a clear code, nothing reaches Bakkt and nothing changes in the
database; rejected values are never echoed."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.config import Settings
from app.db import create_engine
from bakkt_sandbox.testing import RunningSandbox
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, link_account, with_key

WIRE = {"routingNumber": "021000021", "accountNumber": "000123456789", "bankName": "Chase"}


@pytest.fixture
def headers(auth: TokenFactory, party: str) -> dict[str, str]:
    return auth(party)


@pytest.fixture
async def linked(api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]) -> str:
    return await link_account(api, sql, party, headers)


async def snapshot(sql: Execute, party: str) -> tuple[int, ...]:
    result = await sql(
        "SELECT (SELECT count(*) FROM parties WHERE party_ref = :p),"
        " (SELECT count(*) FROM idempotency_keys WHERE party_ref = :p),"
        " (SELECT count(*) FROM bank_accounts WHERE party_ref = :p),"
        " (SELECT count(*) FROM transactions WHERE party_ref = :p),"
        " (SELECT count(*) FROM transaction_history h JOIN transactions t"
        "  ON t.id = h.transaction_id WHERE t.party_ref = :p)",
        {"p": party},
    )
    return tuple(result.one())


BAD_AMOUNTS: list[tuple[Any, str]] = [
    (10.5, "JSON numbers are refused"),
    (10, "JSON numbers are refused"),
    (None, "JSON numbers are refused"),
    (True, "JSON numbers are refused"),
    ("-5.00", "greater than 0"),
    ("0", "greater than 0"),
    ("0.00", "greater than 0"),
    ("10.001", "at most 2 decimal places"),
    ("0.005", "at most 2 decimal places"),
    ("1000000000.00", "too large"),
    ("9" * 40, "too large"),
    ("1e3", "digits with an optional decimal point"),
    (" 10.00", "digits with an optional decimal point"),
    ("10.", "digits with an optional decimal point"),
    (".50", "digits with an optional decimal point"),
    ("+10", "digits with an optional decimal point"),
    ("1,000.00", "digits with an optional decimal point"),
    ("NaN", "digits with an optional decimal point"),
    ("Infinity", "digits with an optional decimal point"),
    ("", "digits with an optional decimal point"),
    ("007.00", "digits with an optional decimal point"),
]


@pytest.mark.parametrize(("amount", "reason"), BAD_AMOUNTS, ids=[repr(a) for a, _ in BAD_AMOUNTS])
@pytest.mark.parametrize("route", ["deposits", "withdrawals"])
async def test_bad_amounts_are_refused_with_422_and_nothing_happens(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
    route: str,
    amount: Any,
    reason: str,
) -> None:
    before = await snapshot(sql, party)
    body = {"amount": amount} if route == "deposits" else {"method": "ACH", "amount": amount}
    response = await api.post(f"/v1/parties/{party}/{route}", json=body, headers=with_key(headers))
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "validation_failed"
    [error] = problem["errors"]
    # A withdrawal's errors are located under its method (the body is a tagged union).
    assert error["name"] == ("amount" if route == "deposits" else "ACH.amount")
    assert reason in error["reason"]
    assert await snapshot(sql, party) == before
    assert await sandbox.transfers(party) == []


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("deposits", {"amount": "10.00", "fee": "1.00"}, "fee"),
    ("deposits", {"amount": "10.00", "currency": "EUR"}, "currency"),
    ("deposits", {"amount": "10.00", "method": "WIRE"}, "method"),
    ("deposits", {"amount": "10.00", "bankAccountId": "not-a-uuid"}, "bankAccountId"),
    ("deposits", {}, "amount"),
    ("deposits", ["10.00"], ""),
    ("withdrawals", {"method": "CHECK", "amount": "10.00"}, ""),
    ("withdrawals", {"method": "WIRE", "amount": "10.00"}, "WIRE.destination"),
    ("withdrawals", {"method": "ACH", "amount": "10.00", "destination": WIRE}, "ACH.destination"),
    (
        "withdrawals",
        {"method": "WIRE", "amount": "10.00", "destination": {**WIRE, "iban": "DE89"}},
        "WIRE.destination.iban",
    ),
    (
        "withdrawals",
        {
            "method": "WIRE",
            "amount": "10.00",
            "destination": {**WIRE, "routingNumber": "021000022"},
        },
        "WIRE.destination.routingNumber",
    ),
    (
        "withdrawals",
        {"method": "WIRE", "amount": "10.00", "destination": {**WIRE, "bankName": ""}},
        "WIRE.destination.bankName",
    ),
    (
        "withdrawals",
        {"method": "WIRE", "amount": "10.00", "destination": {**WIRE, "swiftCode": "nope"}},
        "WIRE.destination.swiftCode",
    ),
    ("bank-accounts", {"processorToken": ""}, "processorToken"),
    ("bank-accounts", {"processorToken": 12345}, "processorToken"),
    ("bank-accounts", {"token": "processor-x"}, "token"),
    ("bank-accounts", {}, "processorToken"),
    ("bank-accounts", {"routingNumber": "011000015"}, "body"),
    ("bank-accounts", {"processorToken": "p-x", "routingNumber": "011000015"}, "body"),
    (
        "bank-accounts",
        {"routingNumber": "011000016", "accountNumber": "12345678", "accountType": "CHECKING"},
        "routingNumber",
    ),
    (
        "bank-accounts",
        {"routingNumber": "011000015", "accountNumber": "12ab", "accountType": "CHECKING"},
        "accountNumber",
    ),
    (
        "bank-accounts",
        {"routingNumber": "011000015", "accountNumber": "12345678", "accountType": "BROKERAGE"},
        "accountType",
    ),
    ("link-sessions", {"redirectUri": "https://x.example", "extra": 1}, "extra"),
]


@pytest.mark.parametrize(
    ("route", "body", "name"),
    BAD_BODIES,
    ids=[f"{r}-{n or 'body'}-{i}" for i, (r, _, n) in enumerate(BAD_BODIES)],
)
async def test_wrong_types_and_unknown_fields_are_refused_with_422_and_nothing_happens(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
    route: str,
    body: Any,
    name: str,
) -> None:
    before = await snapshot(sql, party)
    response = await api.post(f"/v1/parties/{party}/{route}", json=body, headers=with_key(headers))
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"
    names = [e["name"] for e in response.json()["errors"]]
    assert name in names if name else names
    assert await snapshot(sql, party) == before
    assert await sandbox.transfers(party) == []


async def test_malformed_json_is_refused_with_422(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str], linked: str
) -> None:
    before = await snapshot(sql, party)
    response = await api.post(
        f"/v1/parties/{party}/deposits",
        content=b'{"amount": "10.00",',
        headers={**with_key(headers), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"
    assert await snapshot(sql, party) == before


async def test_an_oversized_body_is_refused_with_413_before_it_is_parsed(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str], linked: str
) -> None:
    before = await snapshot(sql, party)
    response = await api.post(
        f"/v1/parties/{party}/deposits",
        json={"amount": "10.00", "padding": "x" * 100_000},
        headers=with_key(headers),
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert await snapshot(sql, party) == before


async def test_rejected_account_numbers_and_tokens_are_never_echoed(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], linked: str
) -> None:
    secret_number = "12345678901234567890123"  # too long to be an account number
    response = await api.post(
        f"/v1/parties/{party}/withdrawals",
        json={
            "method": "WIRE",
            "amount": "10.00",
            "destination": {**WIRE, "accountNumber": secret_number},
        },
        headers=with_key(headers),
    )
    assert response.status_code == 422
    assert secret_number not in response.text
    token = "processor-" + "t" * 2000  # over the length limit
    response = await api.post(
        f"/v1/parties/{party}/bank-accounts",
        json={"processorToken": token},
        headers=with_key(headers),
    )
    assert response.status_code == 422
    assert "t" * 100 not in response.text


async def test_a_party_ref_that_is_not_printable_ascii_is_refused(
    api: httpx.AsyncClient, auth: TokenFactory
) -> None:
    response = await api.get("/v1/parties/al%20ice/bank-accounts", headers=auth("al ice"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["name"] == "partyRef"


@pytest.mark.parametrize("party_ref", ["%2E", "%2E%2E"])
@pytest.mark.parametrize("tail", ["wire-instructions", "balance", "bank-accounts"])
async def test_dot_segment_party_refs_are_refused_before_anything_reaches_bakkt(
    api: httpx.AsyncClient, auth: TokenFactory, party_ref: str, tail: str
) -> None:
    # `GET /v1/parties/../wire-instructions` once went to Bakkt's partner-level path (the
    # server decodes %2E, so this is the path a raw `..` arrives as).
    answer = await api.get(f"/v1/parties/{party_ref}/{tail}", headers=auth("ops", admin=True))
    assert answer.status_code == 422
    assert answer.json()["code"] == "validation_failed"


UNSTORABLE: list[tuple[str, bytes, str]] = [
    (
        "withdrawals",
        b'{"method": "WIRE", "amount": "10.00", "destination": {"routingNumber": "021000021",'
        b' "accountNumber": "000123456789", "bankName": "Ch\\u0000ase"}}',
        "destination.bankName",
    ),
    ("bank-accounts", b'{"processorToken": "processor-\\ud800"}', "processorToken"),
    ("deposits", b'{"amount": "10.00", "\\u0000": 1}', "the body"),
]


@pytest.mark.parametrize(("route", "raw", "where"), UNSTORABLE, ids=["nul", "surrogate", "key"])
async def test_nul_and_lone_surrogates_in_a_body_are_refused_with_a_code(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
    route: str,
    raw: bytes,
    where: str,
) -> None:
    before = await snapshot(sql, party)
    response = await api.post(
        f"/v1/parties/{party}/{route}",
        content=raw,
        headers={**with_key(headers), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_characters"
    assert where in response.json()["detail"]
    assert response.headers["x-request-id"]
    assert "processor-" not in response.text
    assert await snapshot(sql, party) == before
    assert await sandbox.transfers(party) == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"amount": "-5", "amount": "25.00"}',
        b'{"amount": "25.00", "amount": "25.00"}',
        b'{"method": "ACH", "amount": "25.00", "method": "WIRE"}',
    ],
)
async def test_duplicate_json_keys_in_a_money_moving_body_are_refused(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
    raw: bytes,
) -> None:
    before = await snapshot(sql, party)
    route = "withdrawals" if b"method" in raw else "deposits"
    response = await api.post(
        f"/v1/parties/{party}/{route}",
        content=raw,
        headers={**with_key(headers), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "duplicate_field"
    assert await snapshot(sql, party) == before
    assert await sandbox.transfers(party) == []


async def test_a_chunked_body_over_the_limit_gets_413_not_400(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str], linked: str
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"amount": "10.00", "padding": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    before = await snapshot(sql, party)
    response = await api.post(
        f"/v1/parties/{party}/deposits",
        content=chunks(),
        headers={**with_key(headers), "Content-Type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert await snapshot(sql, party) == before


@pytest.mark.parametrize(
    "query",
    [
        {"createdFrom": "9999-12-31T23:59:59-23:59"},
        {"createdTo": "0001-01-01T00:00:00+23:59"},
    ],
)
async def test_transaction_filters_out_of_range_in_utc_are_refused(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], query: dict[str, str]
) -> None:
    response = await api.get(f"/v1/parties/{party}/transactions", params=query, headers=headers)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"
    assert "out of range" in response.json()["detail"]


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
async def test_a_forged_cursor_with_a_time_out_of_range_is_refused(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], stamp: str
) -> None:
    raw = json.dumps([stamp, "00000000-0000-0000-0000-000000000000"]).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    response = await api.get(
        f"/v1/parties/{party}/transactions", params={"cursor": cursor}, headers=headers
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_cursor"


async def test_a_failed_statement_never_carries_its_parameters_into_the_log(
    settings: Settings,
) -> None:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as failed:
                # The error is the statement's, not the value's: only a parameter echo could
                # carry the value into the exception text.
                await conn.execute(text("SELECT CAST(:v AS text), 1 / 0"), {"v": "000123456789"})
    finally:
        await engine.dispose()
    assert "000123456789" not in str(failed.value)
    assert "hidden due to hide_parameters" in str(failed.value)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"amount": "20.00", "destination": WIRE}, 'method: "WIRE" is required with a destination'),
        ({"method": "SEPA", "amount": "20.00"}, "'ACH', 'WIRE'"),
        ({"method": None, "amount": "20.00"}, "'ACH', 'WIRE'"),
    ],
)
async def test_a_withdrawal_with_a_wrong_or_missing_wire_method_says_which_methods_exist(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
    linked: str,
    body: dict[str, Any],
    reason: str,
) -> None:
    before = await snapshot(sql, party)
    response = await api.post(
        f"/v1/parties/{party}/withdrawals", json=body, headers=with_key(headers)
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "validation_failed"
    assert reason in problem["errors"][0]["reason"]
    assert WIRE["accountNumber"] not in response.text
    assert await snapshot(sql, party) == before
    assert await sandbox.transfers(party) == []
