"""Replaying a stored webhook event: a parked event whose transaction exists by now, a CONFLICT
row's other body, a link event; never an applied one, nor one whose word the transaction's
history holds already; the rows it writes are of source `admin` with the operator's name."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from typing import Any

import httpx

from tests.admin.conftest import ADMIN
from tests.admin.helpers import Execute, add_account, add_transfer, history, row_of
from tests.webhooks.events import T0, deliver, encode, fiat, link_event, signed_headers

EVENTS = "/v1/admin/webhook-events"


def _replay(event_pk: int) -> str:
    return f"{EVENTS}/{event_pk}/replay"


async def _stored(api: httpx.AsyncClient, ops: dict[str, str], request_id: str) -> dict[str, Any]:
    response = await api.get(EVENTS, headers=ops, params={"requestId": request_id})
    assert response.status_code == 200, response.text
    [event] = response.json()["items"]
    return dict(event)


def _deposit(party: str, ref: str, status: str, minutes: int, amount: str = "25.00") -> Any:
    return fiat(
        f"e-{uuid.uuid4().hex[:10]}",
        party=party,
        ref=ref,
        kind="ACH_DEPOSIT",
        status=status,
        amount=amount,
        at=T0 + timedelta(minutes=minutes),
    )


async def test_a_parked_event_is_applied_once_its_transaction_exists(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="SUBMITTING")
    # Bakkt's event names a ref we do not have (yet): parked.
    ref = row.ref
    await sql(
        "UPDATE transactions SET bakkt_ref = :other WHERE id = :id",
        {"other": f"not-yet-{ref}", "id": row.id},
    )
    event = _deposit(party, ref, "PENDING", 1)
    assert (await deliver(api, event)).json()["status"] == "PARKED"
    await sql("UPDATE transactions SET bakkt_ref = :ref WHERE id = :id", {"ref": ref, "id": row.id})
    stored = await _stored(api, ops, event["requestId"])
    assert stored["status"] == "PARKED"

    response = await api.post(_replay(stored["id"]), headers=ops)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["event"]["status"] == "APPLIED"
    assert body["outcome"] == f"replayed by {ADMIN}: PENDING applied"
    assert (await row_of(sql, row.id))["status"] == "PENDING"
    last = (await history(sql, "transaction_history", "transaction_id", row.id))[-1]
    assert (last["to_status"], last["applied"], last["source"], last["actor"]) == (
        "PENDING",
        True,
        "admin",
        ADMIN,
    )
    assert last["event_id"] == event["requestId"]

    again = await api.post(_replay(stored["id"]), headers=ops)
    assert again.status_code == 409
    assert again.json()["code"] == "webhook_event_applied"


async def test_a_conflicting_redelivery_is_applied_under_its_own_id(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="SUBMITTING")
    first = _deposit(party, row.ref, "PENDING", 1)
    assert (await deliver(api, first)).json()["status"] == "APPLIED"
    # The same requestId, another body: kept as CONFLICT, not applied.
    other = {**first, "transactionStatus": "COMPLETE"}
    body = encode(other)
    sent = await api.post(
        "/webhooks/bakkt", content=body, headers=signed_headers(body, msg_id="m-2")
    )
    assert sent.json()["status"] == "CONFLICT"
    digest = hashlib.sha256(str(first["requestId"]).encode() + b"\n" + body).hexdigest()
    conflict = await _stored(api, ops, f"conflict:{digest}")
    assert conflict["status"] == "CONFLICT"
    assert (await row_of(sql, row.id))["status"] == "PENDING"

    response = await api.post(_replay(conflict["id"]), headers=ops)

    assert response.status_code == 200, response.text
    assert response.json()["event"]["status"] == "APPLIED"
    assert (await row_of(sql, row.id))["status"] == "COMPLETED"
    last = (await history(sql, "transaction_history", "transaction_id", row.id))[-1]
    assert (last["to_status"], last["event_id"], last["source"], last["actor"]) == (
        "COMPLETED",
        conflict["requestId"],
        "admin",
        ADMIN,
    )


async def test_a_held_event_is_refused_its_word_is_applied_by_releasing_the_hold(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="PENDING")
    event = _deposit(party, row.ref, "COMPLETE", 1, amount="30.00")
    assert (await deliver(api, event)).json()["status"] == "HELD"
    stored = await _stored(api, ops, event["requestId"])
    rows_before = len(await history(sql, "transaction_history", "transaction_id", row.id))

    response = await api.post(_replay(stored["id"]), headers=ops)

    assert response.status_code == 409
    assert response.json()["code"] == "webhook_event_recorded"
    assert len(await history(sql, "transaction_history", "transaction_id", row.id)) == rows_before
    assert (await _stored(api, ops, event["requestId"]))["status"] == "HELD"


async def test_a_link_event_whose_apply_was_lost_writes_the_bank_account_s_history(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    account = await add_account(sql, party, status="PENDING")
    event = link_event(
        f"l-{uuid.uuid4().hex[:10]}", party=party, link_ref=account, status="LINKED", at=T0
    )
    # Stored RECEIVED, as the intake leaves it when the process dies before the apply.
    rows = await sql(
        "INSERT INTO webhook_events (request_id, event_type, party_ref, transaction_ref, body, "
        "headers, status, attempts, needs_operator) VALUES (:r, 'BANK_ACCOUNT_LINK', :p, :ref, "
        ":body, '{}', 'RECEIVED', 0, false) RETURNING id",
        {"r": event["requestId"], "p": party, "ref": account, "body": encode(event)},
    )

    response = await api.post(_replay(rows[0][0]), headers=ops)

    assert response.status_code == 200, response.text
    assert response.json()["event"]["status"] == "APPLIED"
    status = await sql("SELECT status FROM bank_accounts WHERE id = :id", {"id": account})
    assert status[0][0] == "LINKED"
    [last] = await history(sql, "bank_account_history", "bank_account_id", account)
    assert (last["from_status"], last["to_status"], last["source"], last["actor"]) == (
        "PENDING",
        "LINKED",
        "admin",
        ADMIN,
    )
    assert last["event_id"] == event["requestId"]


async def test_an_unreadable_body_and_a_cleared_one_are_409(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute
) -> None:
    body = b'{"not": "a webhook"}'
    sent = await api.post(
        "/webhooks/bakkt", content=body, headers=signed_headers(body, msg_id=f"m-{uuid.uuid4()}")
    )
    assert sent.json()["status"] == "MALFORMED"
    stored = await _stored(api, ops, sent.json()["requestId"])
    response = await api.post(_replay(stored["id"]), headers=ops)
    assert response.status_code == 409
    assert response.json()["code"] == "webhook_event_unreadable"

    await sql("UPDATE webhook_events SET body = NULL WHERE id = :id", {"id": stored["id"]})
    response = await api.post(_replay(stored["id"]), headers=ops)
    assert response.status_code == 409
    assert response.json()["code"] == "webhook_event_body_cleared"


async def test_an_unknown_event_is_404_and_an_impossible_id_422(
    api: httpx.AsyncClient, ops: dict[str, str]
) -> None:
    response = await api.post(_replay(2**63 - 1), headers=ops)
    assert response.status_code == 404
    assert response.json()["code"] == "webhook_event_not_found"
    for bad in ("0", "-1", str(2**63), "abc"):
        response = await api.post(f"{EVENTS}/{bad}/replay", headers=ops)
        assert response.status_code == 422, bad
        assert response.json()["code"] == "validation_failed"


async def test_the_event_list_filters_and_pages_by_id(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="SUBMITTING")
    events = [_deposit(party, row.ref, "PENDING", m) for m in range(3)]
    for event in events:
        await deliver(api, event)
    ids = [(await _stored(api, ops, e["requestId"]))["id"] for e in events]
    page = (await api.get(EVENTS, headers=ops, params={"limit": 2})).json()
    assert [e["id"] for e in page["items"]] == sorted(ids, reverse=True)[:2]
    rest = (
        await api.get(EVENTS, headers=ops, params={"limit": 2, "cursor": page["nextCursor"]})
    ).json()
    assert rest["items"][0]["id"] == min(ids)
    for params, status, code in (
        ({"cursor": "x1"}, 400, "invalid_cursor"),
        ({"cursor": "0"}, 400, "invalid_cursor"),
        ({"status": "NOPE"}, 422, "validation_failed"),
        ({"requestId": "a\x00b"}, 422, "validation_failed"),
    ):
        response = await api.get(EVENTS, headers=ops, params=params)
        assert response.status_code == status, (params, response.text)
        assert response.json()["code"] == code
