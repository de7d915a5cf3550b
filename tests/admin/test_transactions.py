"""The transaction list across parties: by status and by the operational buckets (stuck,
unknown, held, overdue), oldest first, paged by a cursor that cannot tie; and one transaction
with its whole history."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.admin.helpers import Execute, add_transfer

LIST = "/v1/admin/transactions"


async def _ids(api: httpx.AsyncClient, ops: dict[str, str], **params: Any) -> list[str]:
    response = await api.get(LIST, headers=ops, params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def test_each_bucket_lists_what_it_names(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    old_deposit = await add_transfer(sql, party, status="PENDING", age=timedelta(days=10))
    young_deposit = await add_transfer(sql, party, status="PENDING", age=timedelta(hours=1))
    late_withdrawal = await add_transfer(
        sql, party, status="PENDING", type_="WITHDRAWAL", age=timedelta(hours=30)
    )
    young_wire = await add_transfer(
        sql, party, status="PENDING", type_="WITHDRAWAL", method="WIRE", age=timedelta(hours=2)
    )
    unknown = await add_transfer(sql, party, status="UNKNOWN", age=timedelta(minutes=1))
    # Past the 120 s grace period: nobody waits for its answer any more.
    abandoned = await add_transfer(sql, party, status="SUBMITTING", age=timedelta(minutes=5))
    in_flight = await add_transfer(sql, party, status="SUBMITTING", age=timedelta(seconds=5))
    held = await add_transfer(sql, party, status="COMPLETED", age=timedelta(days=20))
    await sql("UPDATE transactions SET held_for_review = true WHERE id = :id", {"id": held.id})
    settled_long_ago = await add_transfer(sql, party, status="COMPLETED", age=timedelta(days=30))

    mine = {"partyRef": party}
    assert await _ids(api, ops, bucket="stuck", **mine) == [old_deposit.id]
    assert await _ids(api, ops, bucket="stuck", stuckAfterHours=24, **mine) == [
        old_deposit.id,
        late_withdrawal.id,
    ]
    assert await _ids(api, ops, bucket="unknown", **mine) == [abandoned.id, unknown.id]
    assert await _ids(api, ops, bucket="held", **mine) == [held.id]
    assert await _ids(api, ops, bucket="overdue", **mine) == [old_deposit.id, late_withdrawal.id]
    # Oldest first, every status unless filtered.
    assert await _ids(api, ops, **mine) == [
        settled_long_ago.id,
        held.id,
        old_deposit.id,
        late_withdrawal.id,
        young_wire.id,
        young_deposit.id,
        abandoned.id,
        unknown.id,
        in_flight.id,
    ]
    assert await _ids(api, ops, status=["SUBMITTING", "UNKNOWN"], **mine) == [
        abandoned.id,
        unknown.id,
        in_flight.id,
    ]
    # Filters combine: a bucket and a status.
    assert await _ids(api, ops, bucket="stuck", stuckAfterHours=24, status="UNKNOWN", **mine) == []
    assert await _ids(api, ops, bucket="stuck", stuckAfterHours=24, status="PENDING", **mine) == [
        old_deposit.id,
        late_withdrawal.id,
    ]
    assert await _ids(api, ops, bucket="overdue", status="UNKNOWN", **mine) == []


async def test_an_item_says_when_a_pending_transaction_is_expected_and_why_it_is_held(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(
        sql, party, status="PENDING", type_="WITHDRAWAL", age=timedelta(hours=1)
    )
    await sql(
        "UPDATE transactions SET held_for_review = true, review_reason = 'webhook e-1: amount' "
        "WHERE id = :id",
        {"id": row.id},
    )
    response = await api.get(LIST, headers=ops, params={"partyRef": party})
    [item] = response.json()["items"]
    assert item["partyRef"] == party
    assert item["bakktRef"] == row.ref
    assert item["heldForReview"] is True
    assert item["reviewReason"] == "webhook e-1: amount"
    # An ACH withdrawal is overdue 24 h after it was created.
    window = datetime.fromisoformat(item["expectedBy"]) - datetime.fromisoformat(item["createdAt"])
    assert window == timedelta(hours=24)


async def test_pages_follow_the_cursor_without_gaps_or_repeats_when_times_tie(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    rows = [await add_transfer(sql, party, status="PENDING") for _ in range(7)]
    # The same instant for all: only the id can order them.
    await sql(
        "UPDATE transactions SET created_at = '2026-11-20T15:00:00Z' WHERE party_ref = :p",
        {"p": party},
    )
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"partyRef": party, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        body = (await api.get(LIST, headers=ops, params=params)).json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(r.id for r in rows)


async def test_one_transaction_of_any_party_with_its_history(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute, party: str
) -> None:
    row = await add_transfer(sql, party, status="SUBMITTING")
    response = await api.get(f"{LIST}/{row.id}", headers=ops)
    assert response.status_code == 200
    body = response.json()
    assert body["partyRef"] == party
    [created] = body["history"]
    assert (created["from"], created["to"], created["source"]) == (None, "SUBMITTING", "api")
    assert created["actor"] is None
    assert created["note"] == "requested by the consumer"


async def test_an_unknown_transaction_is_404(api: httpx.AsyncClient, ops: dict[str, str]) -> None:
    response = await api.get(f"{LIST}/{uuid.uuid4()}", headers=ops)
    assert response.status_code == 404
    assert response.json()["code"] == "transaction_not_found"


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"bucket": "late"}, 422, "validation_failed"),
        ({"status": "SETTLED"}, 422, "validation_failed"),
        ({"limit": 0}, 422, "validation_failed"),
        ({"limit": 201}, 422, "validation_failed"),
        ({"stuckAfterHours": 0}, 422, "validation_failed"),
        ({"partyRef": "has space"}, 422, "validation_failed"),
        ({"unknownFilter": "x"}, 422, "validation_failed"),
        ({"cursor": "not-a-cursor"}, 400, "invalid_cursor"),
    ],
)
async def test_bad_filters_are_4xx_with_a_code(
    api: httpx.AsyncClient, ops: dict[str, str], params: dict[str, Any], status: int, code: str
) -> None:
    response = await api.get(LIST, headers=ops, params=params)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
