"""Releasing a transaction held for review: the hold ends, what was withheld is applied in
Bakkt's order through the state table, the disagreement the operator accepted no longer holds
it (a different one does), and each step is in the history with source `admin` and the
operator's name."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx

from tests.admin.conftest import ADMIN
from tests.admin.helpers import Execute, add_transfer, history, row_of
from tests.webhooks.events import T0, deliver, fiat


def _release(txn_id: str) -> str:
    return f"/v1/admin/transactions/{txn_id}/release"


async def _deliver(api: httpx.AsyncClient, event: dict[str, Any]) -> str:
    response = await deliver(api, event)
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def _event(party: str, ref: str, status: str, amount: str, minutes: int, **kw: Any) -> Any:
    return fiat(
        f"e-{uuid.uuid4().hex[:10]}",
        party=party,
        ref=ref,
        kind="ACH_DEPOSIT",
        status=status,
        amount=amount,
        at=T0 + timedelta(minutes=minutes),
        **kw,
    )


async def test_release_applies_what_was_withheld_in_bakkt_s_order(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="SUBMITTING", cents=2500)
    # Bakkt's record says 25.01 where ours says 25.00: held, and both words withheld.
    complete = _event(party, row.ref, "COMPLETE", "25.01", 2)
    pending = _event(party, row.ref, "PENDING", "25.01", 1)
    assert await _deliver(api, complete) == "HELD"
    assert await _deliver(api, pending) == "HELD"
    assert (await row_of(sql, row.id))["held_for_review"] is True

    response = await api.post(_release(row.id), headers=ops, json={"note": "Bakkt is right"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outcome"] == "released; moved SUBMITTING -> PENDING -> COMPLETED"
    txn = body["transaction"]
    assert (txn["status"], txn["heldForReview"]) == ("COMPLETED", False)
    rows = await history(sql, "transaction_history", "transaction_id", row.id)
    assert [(r["to_status"], r["source"], r["applied"], r["actor"]) for r in rows] == [
        ("SUBMITTING", "api", True, None),
        ("COMPLETED", "webhook", False, None),
        ("PENDING", "webhook", False, None),
        ("PENDING", "admin", True, ADMIN),
        ("COMPLETED", "admin", True, ADMIN),
    ]
    assert rows[-1]["note"] == (
        f"released from review: applies what was withheld from {complete['requestId']}; "
        "Bakkt is right"
    )
    assert rows[-1]["event_time"] == T0 + timedelta(minutes=2)
    alert = await sql(
        "SELECT resolved_by, resolution_note FROM operator_alerts "
        "WHERE kind = 'transaction_held_for_review' AND subject = :s",
        {"s": f"transaction {row.id}"},
    )
    assert [tuple(a) for a in alert] == [(ADMIN, "Bakkt is right")]

    # The disagreement accepted: Bakkt's next word with it applies instead of holding again.
    returned = _event(party, row.ref, "RETURNED", "25.01", 3, reason="R01")
    assert await _deliver(api, returned) == "APPLIED"
    after = await row_of(sql, row.id)
    assert (after["status"], after["held_for_review"]) == ("RETURNED", False)


async def test_a_different_disagreement_after_a_release_holds_again(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="PENDING", cents=2500)
    assert await _deliver(api, _event(party, row.ref, "COMPLETE", "25.01", 1)) == "HELD"
    assert (await api.post(_release(row.id), headers=ops)).status_code == 200
    assert (await row_of(sql, row.id))["status"] == "COMPLETED"

    assert await _deliver(api, _event(party, row.ref, "RETURNED", "99.00", 2)) == "HELD"

    after = await row_of(sql, row.id)
    assert (after["status"], after["held_for_review"]) == ("COMPLETED", True)


async def test_a_release_with_nothing_withheld_still_leaves_its_row(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="PENDING")
    await sql(
        "UPDATE transactions SET held_for_review = true, review_reason = 'sweep: amount' "
        "WHERE id = :id",
        {"id": row.id},
    )

    response = await api.post(_release(row.id), headers=ops)

    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "released; nothing withheld to apply"
    last = (await history(sql, "transaction_history", "transaction_id", row.id))[-1]
    assert (last["from_status"], last["to_status"], last["applied"]) == (
        "PENDING",
        "PENDING",
        False,
    )
    assert (last["source"], last["actor"]) == ("admin", ADMIN)
    after = await row_of(sql, row.id)
    assert after["held_for_review"] is False
    # Recovery skipped it while held; open, it is due again at once.
    assert after["next_check_at"] is not None


async def test_releasing_a_transaction_that_is_not_held_is_409_and_changes_nothing(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="PENDING")

    response = await api.post(_release(row.id), headers=ops)

    assert response.status_code == 409
    assert response.json()["code"] == "transaction_not_held"
    assert len(await history(sql, "transaction_history", "transaction_id", row.id)) == 1


async def test_releasing_an_unknown_transaction_is_404(
    api: httpx.AsyncClient, ops: dict[str, str]
) -> None:
    response = await api.post(_release(str(uuid.uuid4())), headers=ops)
    assert response.status_code == 404
    assert response.json()["code"] == "transaction_not_found"


async def test_a_bad_note_is_422_and_releases_nothing(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="PENDING")
    await sql("UPDATE transactions SET held_for_review = true WHERE id = :id", {"id": row.id})
    for body, code in (
        (b'{"note": ""}', "validation_failed"),
        (b'{"note": "' + b"x" * 1001 + b'"}', "validation_failed"),
        (b'{"note": 5}', "validation_failed"),
        (b'{"note": "a", "note": "b"}', "duplicate_field"),
        (b'{"note": "\\u0000"}', "invalid_characters"),
        (b'{"note": "a", "extra": 1}', "validation_failed"),
        (b"not json", "validation_failed"),
    ):
        response = await api.post(
            _release(row.id),
            headers={**ops, "content-type": "application/json"},
            content=body,
        )
        assert response.status_code == 422, (body, response.text)
        assert response.json()["code"] == code, body
    assert (await row_of(sql, row.id))["held_for_review"] is True


async def test_the_hold_and_the_release_are_events_before_the_moves_they_let_through(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="SUBMITTING", cents=2500)
    assert await _deliver(api, _event(party, row.ref, "PENDING", "25.01", 1)) == "HELD"
    assert await _deliver(api, _event(party, row.ref, "COMPLETE", "25.01", 2)) == "HELD"
    response = await api.post(_release(row.id), headers=ops, json={"note": "Bakkt is right"})
    assert response.status_code == 200, response.text
    found = await sql(
        "SELECT type, data FROM events WHERE subject_id = CAST(:id AS uuid) ORDER BY local_id",
        {"id": row.id},
    )
    assert [(r.type, r.data["status"]) for r in found] == [
        # Once, however many words the hold withheld.
        ("transaction.held_for_review", "SUBMITTING"),
        # The transaction as it was released; the moves it let through follow.
        ("transaction.released", "SUBMITTING"),
        ("transaction.pending", "PENDING"),
        ("transaction.completed", "COMPLETED"),
    ]
