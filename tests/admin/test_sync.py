"""A forced sync asks Bakkt about one transaction now and acts on the answer by recovery's
rules, with no database transaction open across the call; whatever it does is in the history
with source `admin` and the operator's name."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx

from app.bakkt import BakktClient
from bakkt_sandbox.testing import RunningSandbox
from tests.admin.conftest import ADMIN
from tests.admin.helpers import Execute, add_transfer, history, link_at_bakkt, row_of


def _sync(txn_id: str) -> str:
    return f"/v1/admin/transactions/{txn_id}/sync"


async def test_a_settlement_whose_webhook_was_lost_is_applied_now(
    api: httpx.AsyncClient,
    ops: dict[str, str],
    sql: Execute,
    bakkt: BakktClient,
    sandbox: RunningSandbox,
    party: str,
) -> None:
    await link_at_bakkt(bakkt, party)
    row = await add_transfer(sql, party, status="PENDING")
    await bakkt.transfer(row.request())
    await sandbox.settle(row.ref)

    response = await api.post(_sync(row.id), headers=ops)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["transaction"]["status"] == "COMPLETED"
    assert body["outcome"].startswith("Bakkt reports COMPLETE")
    last = (await history(sql, "transaction_history", "transaction_id", row.id))[-1]
    assert (last["from_status"], last["to_status"], last["applied"]) == (
        "PENDING",
        "COMPLETED",
        True,
    )
    assert (last["source"], last["actor"]) == ("admin", ADMIN)
    assert (await row_of(sql, row.id))["next_check_at"] is None


async def test_an_unknown_outcome_bakkt_never_received_is_resent_with_its_own_key_once(
    api: httpx.AsyncClient,
    ops: dict[str, str],
    sql: Execute,
    bakkt: BakktClient,
    sandbox: RunningSandbox,
    party: str,
) -> None:
    await link_at_bakkt(bakkt, party)
    row = await add_transfer(sql, party, status="UNKNOWN")

    response = await api.post(_sync(row.id), headers=ops)

    assert response.status_code == 200, response.text
    assert response.json()["transaction"]["status"] == "PENDING"
    ledger = await sandbox.transfers(party)
    assert [(t["partnerTransactionRef"], t["idempotencyKey"]) for t in ledger] == [
        (row.ref, row.key)
    ]
    last = (await history(sql, "transaction_history", "transaction_id", row.id))[-1]
    assert (last["to_status"], last["source"], last["actor"]) == ("PENDING", "admin", ADMIN)
    assert last["note"] == "re-sent with the same idempotency key; accepted by Bakkt"

    # Again: Bakkt has it now, so it is found, never sent a second time.
    assert (await api.post(_sync(row.id), headers=ops)).status_code == 200
    assert [t["requestCount"] for t in await sandbox.transfers(party)] == [1]


async def test_bakkt_saying_the_same_is_recorded_as_a_sync_that_changed_nothing(
    api: httpx.AsyncClient,
    ops: dict[str, str],
    sql: Execute,
    bakkt: BakktClient,
    party: str,
) -> None:
    await link_at_bakkt(bakkt, party)
    row = await add_transfer(sql, party, status="PENDING")
    await bakkt.transfer(row.request())

    response = await api.post(_sync(row.id), headers=ops)

    assert response.status_code == 200, response.text
    assert response.json()["transaction"]["status"] == "PENDING"
    rows = await history(sql, "transaction_history", "transaction_id", row.id)
    assert len(rows) == 2
    last = rows[-1]
    assert (last["from_status"], last["to_status"], last["applied"]) == (
        "PENDING",
        "PENDING",
        False,
    )
    assert (last["source"], last["actor"]) == ("admin", ADMIN)
    assert "forced sync: Bakkt reports PENDING" in last["note"]


async def test_a_settled_transaction_bakkt_does_not_know_raises_one_alert(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="COMPLETED")

    for _ in range(2):
        response = await api.post(_sync(row.id), headers=ops)
        assert response.status_code == 200, response.text
        assert response.json()["transaction"]["status"] == "COMPLETED"

    alerts = await sql(
        "SELECT count(*) FROM operator_alerts WHERE kind = 'transaction_missing_at_bakkt' "
        "AND subject = :s",
        {"s": f"transaction {row.id}"},
    )
    assert alerts[0][0] == 1
    rows = await history(sql, "transaction_history", "transaction_id", row.id)
    assert [(r["source"], r["actor"], r["applied"]) for r in rows[1:]] == [
        ("admin", ADMIN, False),
        ("admin", ADMIN, False),
    ]


async def test_a_submitting_transaction_inside_its_grace_period_is_409_and_untouched(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, sandbox: RunningSandbox, party: str
) -> None:
    row = await add_transfer(sql, party, status="SUBMITTING", age=timedelta(seconds=5))

    response = await api.post(_sync(row.id), headers=ops)

    assert response.status_code == 409
    assert response.json()["code"] == "transaction_in_flight"
    assert 100 <= int(response.headers["Retry-After"]) <= 120
    assert len(await history(sql, "transaction_history", "transaction_id", row.id)) == 1
    assert await sandbox.transfers(party) == []


async def test_bakkt_not_answering_is_503_and_writes_nothing(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, sandbox: RunningSandbox, party: str
) -> None:
    row = await add_transfer(sql, party, status="UNKNOWN")
    await sandbox.set_fault("getTransaction", "error", status=503, count=10)

    response = await api.post(_sync(row.id), headers=ops)

    assert response.status_code == 503
    assert response.json()["code"] == "bakkt_unavailable"
    assert "Retry-After" in response.headers
    assert len(await history(sql, "transaction_history", "transaction_id", row.id)) == 1
    assert (await row_of(sql, row.id))["status"] == "UNKNOWN"


async def test_an_unknown_transaction_is_404_and_a_bad_id_422(
    api: httpx.AsyncClient, ops: dict[str, str]
) -> None:
    response = await api.post(_sync(str(uuid.uuid4())), headers=ops)
    assert response.status_code == 404
    assert response.json()["code"] == "transaction_not_found"
    response = await api.post(_sync("not-a-uuid"), headers=ops)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"
