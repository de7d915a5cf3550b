"""Balance and wire instructions: live from Bakkt every time, never cached."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bakkt_sandbox.testing import RunningSandbox
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, insert_linked_account, with_key


@pytest.fixture
def headers(auth: TokenFactory, party: str) -> dict[str, str]:
    return auth(party)


async def test_the_balance_is_bakkts_live_figure_and_not_cacheable(
    api: httpx.AsyncClient, sandbox: RunningSandbox, party: str, headers: dict[str, str]
) -> None:
    url = f"/v1/parties/{party}/balance"
    assert (await api.get(url, headers=headers)).json()["settled"] == "0.00"
    await sandbox.credit(party, "123.45")
    response = await api.get(url, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"currency": "USD", "settled": "123.45", "unsettled": "0.00"}
    assert response.headers["cache-control"] == "no-store"


async def test_the_balance_while_bakkt_is_down_answers_503_with_retry_after(
    api: httpx.AsyncClient, sandbox: RunningSandbox, party: str, headers: dict[str, str]
) -> None:
    await sandbox.set_fault("getFiatAccountBalance", "error", status=503)
    response = await api.get(f"/v1/parties/{party}/balance", headers=headers)
    assert response.status_code == 503
    assert response.json()["code"] == "bakkt_unavailable"
    assert int(response.headers["retry-after"]) >= 1


async def test_a_party_bakkt_does_not_know_gets_403_party_account_not_found(
    api: httpx.AsyncClient, auth: TokenFactory
) -> None:
    party = f"unknown-{uuid.uuid4().hex[:8]}"
    for path in ("balance", "wire-instructions"):
        response = await api.get(f"/v1/parties/{party}/{path}", headers=auth(party))
        assert response.status_code == 403
        assert response.json()["code"] == "party_account_not_found"


async def test_wire_instructions_are_bakkts_own_for_the_party_and_not_cacheable(
    api: httpx.AsyncClient, sandbox: RunningSandbox, party: str, headers: dict[str, str]
) -> None:
    response = await api.get(f"/v1/parties/{party}/wire-instructions", headers=headers)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "referenceNumber",
        "routingNumber",
        "accountNumber",
        "swiftCode",
        "bankName",
        "bankAddress",
        "beneficiaryName",
        "beneficiaryAddress",
    }
    assert body["referenceNumber"] == (await sandbox.party(party))["wireReferenceNumber"]


async def test_wire_instructions_follow_the_deposit_gate(
    api: httpx.AsyncClient, sql: Execute, auth: TokenFactory, party: str, headers: dict[str, str]
) -> None:
    await sql(
        "INSERT INTO parties (party_ref, status, status_reason) VALUES (:p, 'LIQUIDATED', "
        "'LIQUIDATE_ACCOUNT')",
        {"p": party},
    )
    response = await api.get(f"/v1/parties/{party}/wire-instructions", headers=headers)
    assert response.status_code == 403
    assert response.json()["code"] == "party_not_active"
    # Bakkt's own view counts too: a party it holds suspended is refused by Bakkt.
    suspended = f"suspended-{uuid.uuid4().hex[:8]}"
    at_bakkt = await api.get(f"/v1/parties/{suspended}/wire-instructions", headers=auth(suspended))
    assert at_bakkt.status_code == 403
    assert at_bakkt.json()["code"] == "party_suspended"


async def test_bakkt_refusing_our_credentials_is_a_502_for_reads_and_unknown_for_transfers(
    api_with: Any, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    await insert_linked_account(sql, party)
    wrong = await api_with(bakkt_client_secret=SecretStr("not-the-client-secret"))
    balance = await wrong.get(f"/v1/parties/{party}/balance", headers=headers)
    assert balance.status_code == 502
    assert balance.json()["code"] == "bakkt_auth_failed"
    # Nothing reached Bakkt, but the intent is written: recovery sends it once we are fixed.
    deposit = await wrong.post(
        f"/v1/parties/{party}/deposits", json={"amount": "10.00"}, headers=with_key(headers)
    )
    assert deposit.status_code == 202
    assert deposit.json()["status"] == "UNKNOWN"
