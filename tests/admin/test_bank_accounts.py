"""Disabling a bank account stops ACH money through it here; enabling it again undoes only an
operator's disable, never an ACH return's (that account cannot be used again). Each is in the
account's history with source `admin` and the operator's name."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest

from tests.admin.conftest import ADMIN, TokenFactory
from tests.admin.helpers import Execute, add_account, add_transfer, history
from tests.webhooks.events import T0, deliver, fiat, link_event

ACCOUNTS = "/v1/admin/bank-accounts"


async def _status(sql: Execute, account: str) -> tuple[str, str | None]:
    rows = await sql(
        "SELECT status, reason_code FROM bank_accounts WHERE id = :id", {"id": account}
    )
    return rows[0][0], rows[0][1]


async def test_disable_stops_deposits_and_enable_restores_the_account(
    api: httpx.AsyncClient, ops: dict[str, str], token: TokenFactory, sql: Execute, party: str
) -> None:
    account = await add_account(sql, party)

    response = await api.post(
        f"{ACCOUNTS}/{account}/disable", headers=ops, json={"reason": "fraud report 42"}
    )

    assert response.status_code == 200, response.text
    detail = response.json()["bankAccount"]
    assert (detail["status"], detail["reasonCode"], detail["current"]) == (
        "DISABLED",
        "operator_disabled",
        False,
    )
    [row] = await history(sql, "bank_account_history", "bank_account_id", account)
    assert (row["from_status"], row["to_status"], row["source"], row["actor"]) == (
        "LINKED",
        "DISABLED",
        "admin",
        ADMIN,
    )
    assert row["note"] == "disabled by an operator: fraud report 42"
    deposit = await api.post(
        f"/v1/parties/{party}/deposits",
        headers={**token(party), "Idempotency-Key": f"k-{uuid.uuid4()}"},
        json={"amount": "25.00"},
    )
    assert deposit.status_code == 409
    assert deposit.json()["code"] == "bank_account_disabled"
    assert deposit.json()["reasonCode"] == "operator_disabled"

    response = await api.post(f"{ACCOUNTS}/{account}/enable", headers=ops, json={"note": "ok"})

    assert response.status_code == 200, response.text
    assert response.json()["bankAccount"]["status"] == "LINKED"
    assert await _status(sql, account) == ("LINKED", None)
    last = (await history(sql, "bank_account_history", "bank_account_id", account))[-1]
    assert (last["from_status"], last["to_status"], last["source"], last["actor"]) == (
        "DISABLED",
        "LINKED",
        "admin",
        ADMIN,
    )
    assert last["note"] == "enabled by an operator: ok"


async def test_an_account_an_ach_return_disabled_cannot_be_enabled(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    account = await add_account(sql, party, status="DISABLED", reason_code="R02")

    response = await api.post(f"{ACCOUNTS}/{account}/enable", headers=ops)

    assert response.status_code == 409
    assert response.json()["code"] == "bank_account_not_disabled_by_operator"
    assert "R02" in response.json()["detail"]
    assert await _status(sql, account) == ("DISABLED", "R02")
    assert await history(sql, "bank_account_history", "bank_account_id", account) == []


async def test_an_ach_return_after_an_operator_disabled_the_account_makes_it_final(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    account = await add_account(sql, party)
    row = await add_transfer(sql, party, status="COMPLETED", bank_account_id=account)
    disable = await api.post(f"{ACCOUNTS}/{account}/disable", headers=ops, json={"reason": "x"})
    assert disable.status_code == 200
    returned = fiat(
        f"e-{uuid.uuid4().hex[:10]}",
        party=party,
        ref=row.ref,
        kind="ACH_DEPOSIT",
        status="RETURNED",
        amount="25.00",
        at=T0,
        reason="R02",
    )
    assert (await deliver(api, returned)).json()["status"] == "APPLIED"
    assert await _status(sql, account) == ("DISABLED", "R02")

    response = await api.post(f"{ACCOUNTS}/{account}/enable", headers=ops)

    assert response.status_code == 409
    assert response.json()["code"] == "bank_account_not_disabled_by_operator"


async def test_bakkt_linking_it_again_does_not_lift_an_operator_s_disable(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    account = await add_account(sql, party)
    await api.post(f"{ACCOUNTS}/{account}/disable", headers=ops, json={"reason": "x"})

    event = link_event(
        f"l-{uuid.uuid4().hex[:10]}", party=party, link_ref=account, status="LINKED", at=T0
    )
    assert (await deliver(api, event)).json()["status"] == "IGNORED"
    assert await _status(sql, account) == ("DISABLED", "operator_disabled")

    # Bakkt unlinking it is final either way: applied.
    unlinked = link_event(
        f"l-{uuid.uuid4().hex[:10]}",
        party=party,
        link_ref=account,
        status="UNLINKED",
        at=T0 + timedelta(minutes=1),
    )
    assert (await deliver(api, unlinked)).json()["status"] == "APPLIED"
    assert (await _status(sql, account))[0] == "UNLINKED"


async def test_enabling_after_another_account_was_linked_leaves_it_replaced(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    first = await add_account(sql, party)
    await api.post(f"{ACCOUNTS}/{first}/disable", headers=ops, json={"reason": "x"})
    second = await add_account(sql, party)

    response = await api.post(f"{ACCOUNTS}/{first}/enable", headers=ops)

    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "enabled: REPLACED"
    assert await _status(sql, first) == ("REPLACED", None)
    assert (await _status(sql, second))[0] == "LINKED"
    last = (await history(sql, "bank_account_history", "bank_account_id", first))[-1]
    assert last["note"] == f"enabled by an operator; bank account {second} was linked since"


@pytest.mark.parametrize(
    ("status", "reason", "code"),
    [
        ("DISABLED", "operator_disabled", "bank_account_already_disabled"),
        ("DISABLED", "R03", "bank_account_already_disabled"),
        ("PENDING", None, "bank_account_not_linked"),
        ("REPLACED", None, "bank_account_not_linked"),
        ("UNLINKED", None, "bank_account_not_linked"),
    ],
)
async def test_disabling_an_account_that_is_not_linked_is_409(
    api: httpx.AsyncClient,
    ops: dict[str, str],
    sql: Execute,
    party: str,
    status: str,
    reason: str | None,
    code: str,
) -> None:
    account = await add_account(sql, party, status=status, reason_code=reason)

    response = await api.post(f"{ACCOUNTS}/{account}/disable", headers=ops, json={"reason": "x"})

    assert response.status_code == 409
    assert response.json()["code"] == code
    assert await _status(sql, account) == (status, reason)


@pytest.mark.parametrize("status", ["LINKED", "PENDING", "FAILED"])
async def test_enabling_an_account_that_is_not_disabled_is_409(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str, status: str
) -> None:
    account = await add_account(sql, party, status=status)

    response = await api.post(f"{ACCOUNTS}/{account}/enable", headers=ops)

    assert response.status_code == 409
    assert response.json()["code"] == "bank_account_not_disabled_by_operator"


async def test_unknown_accounts_are_404_and_bad_bodies_422(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    for action, body in (("disable", {"reason": "x"}), ("enable", None)):
        response = await api.post(f"{ACCOUNTS}/{uuid.uuid4()}/{action}", headers=ops, json=body)
        assert response.status_code == 404
        assert response.json()["code"] == "bank_account_not_found"
    response = await api.get(f"{ACCOUNTS}/{uuid.uuid4()}", headers=ops)
    assert response.status_code == 404

    account = await add_account(sql, party)
    for body in (None, {}, {"reason": ""}, {"reason": "x" * 1001}, {"reason": "x", "y": 1}):
        response = await api.post(f"{ACCOUNTS}/{account}/disable", headers=ops, json=body)
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_failed"
    assert await _status(sql, account) == ("LINKED", None)


async def test_one_account_of_any_party_with_its_history(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    account = await add_account(sql, party)
    await api.post(f"{ACCOUNTS}/{account}/disable", headers=ops, json={"reason": "x"})

    response = await api.get(f"{ACCOUNTS}/{account}", headers=ops)

    assert response.status_code == 200
    body = response.json()
    assert body["partyRef"] == party
    assert [(h["to"], h["source"], h["actor"]) for h in body["history"]] == [
        ("DISABLED", "admin", ADMIN)
    ]
