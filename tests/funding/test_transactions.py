"""Reading transactions: newest first, an opaque cursor over (created_at, id), filters, and one
transaction with its history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def headers(auth: TokenFactory, party: str) -> dict[str, str]:
    return auth(party)


async def insert(
    sql: Execute,
    party: str,
    at: datetime,
    *,
    status: str = "PENDING",
    kind: str = "DEPOSIT",
    cents: int = 1000,
    txn_id: uuid.UUID | None = None,
) -> str:
    txn_id = txn_id or uuid.uuid4()
    await sql(
        "INSERT INTO parties (party_ref, status) VALUES (:p, 'ACTIVE') ON CONFLICT DO NOTHING",
        {"p": party},
    )
    await sql(
        "INSERT INTO transactions (id, party_ref, type, method, origin, status, amount_cents,"
        " currency, bakkt_ref, bakkt_idempotency_key, wire_account_mask, created_at, updated_at)"
        " VALUES (:id, :p, :kind, 'ACH', 'PARTNER', :status, :cents, 'USD', :ref, :key, '9876',"
        " :at, :at)",
        {
            "id": txn_id,
            "ref": str(txn_id),
            "key": f"bakkt-key-{txn_id}",
            "p": party,
            "kind": kind,
            "status": status,
            "cents": cents,
            "at": at,
        },
    )
    return str(txn_id)


async def all_pages(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], params: dict[str, Any]
) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await api.get(f"/v1/parties/{party}/transactions", params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([item["id"] for item in body["items"]])
        cursor = body["nextCursor"]
        if cursor is None:
            return pages


async def test_pages_run_newest_first_without_gaps_or_repeats_even_on_equal_times(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    # Three at the very same instant: the id breaks the tie.
    minutes = [0, 1, 2, 2, 2, 3, 4]
    rows = [(m, await insert(sql, party, T0 + timedelta(minutes=m))) for m in minutes]
    expected = [txn_id for _, txn_id in sorted(rows, reverse=True)]
    pages = await all_pages(api, party, headers, {"limit": 2})
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [i for page in pages for i in page] == expected


async def test_a_full_last_page_has_no_next_cursor(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    for i in range(2):
        await insert(sql, party, T0 + timedelta(minutes=i))
    response = await api.get(
        f"/v1/parties/{party}/transactions", params={"limit": 2}, headers=headers
    )
    assert len(response.json()["items"]) == 2
    assert response.json()["nextCursor"] is None


async def test_filters_by_status_type_and_created_range_combine(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    a = await insert(sql, party, T0, status="COMPLETED")
    b = await insert(sql, party, T0 + timedelta(hours=1), status="FAILED")
    c = await insert(sql, party, T0 + timedelta(hours=2), status="PENDING", kind="WITHDRAWAL")
    d = await insert(sql, party, T0 + timedelta(hours=3), status="COMPLETED", kind="RETURN_FEE")
    url = f"/v1/parties/{party}/transactions"

    async def ids(params: list[tuple[str, str]]) -> list[str]:
        response = await api.get(url, params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["items"]]

    assert await ids([("status", "COMPLETED")]) == [d, a]
    assert await ids([("status", "COMPLETED"), ("status", "FAILED")]) == [d, b, a]
    assert await ids([("type", "WITHDRAWAL")]) == [c]
    assert await ids([("type", "DEPOSIT"), ("status", "FAILED")]) == [b]
    window = [
        ("createdFrom", (T0 + timedelta(hours=1)).isoformat()),
        ("createdTo", (T0 + timedelta(hours=3)).isoformat()),
    ]
    assert await ids(window) == [c, b]


async def test_items_show_the_public_fields_only(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    await insert(sql, party, T0, cents=123456)
    response = await api.get(f"/v1/parties/{party}/transactions", headers=headers)
    [item] = response.json()["items"]
    assert set(item) == {
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
    assert item["amount"] == "1234.56"
    assert "bakkt-key" not in response.text
    # The wire account's last four digits are not shown: no field holds them (a bare "9876" in
    # the text could be a random id's digits).
    assert "9876" not in item.values()
    assert "mask" not in response.text.lower()


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "LOST"}, "status.0"),
        ({"type": "GIFT"}, "type.0"),
        ({"createdFrom": "2026-03-01T12:00:00"}, "createdFrom"),
        ({"createdTo": "yesterday"}, "createdTo"),
        ({"sort": "asc"}, "sort"),
    ],
    ids=[
        "limit-0",
        "limit-101",
        "limit-text",
        "unknown-status",
        "unknown-type",
        "naive-time",
        "not-a-time",
        "unknown-parameter",
    ],
)
async def test_bad_query_parameters_answer_422_naming_the_parameter(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], params: dict[str, str], name: str
) -> None:
    response = await api.get(f"/v1/parties/{party}/transactions", params=params, headers=headers)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"
    assert [e["name"] for e in response.json()["errors"]] == [name]


@pytest.mark.parametrize("cursor", ["garbage!", "bm90IGpzb24", "WyIyMDI2LTAzLTAxIiwgIngiXQ"])
async def test_a_cursor_not_made_by_the_service_answers_400_invalid_cursor(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], cursor: str
) -> None:
    response = await api.get(
        f"/v1/parties/{party}/transactions", params={"cursor": cursor}, headers=headers
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_cursor"


async def test_one_transaction_reads_with_its_full_history_in_order(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    txn_id = await insert(sql, party, T0, status="RETURNED")
    for from_status, to_status, source, event, applied, reason in [
        (None, "SUBMITTING", "api", None, True, None),
        ("SUBMITTING", "PENDING", "api", None, True, None),
        ("PENDING", "COMPLETED", "webhook", "evt-1", True, None),
        ("COMPLETED", "PENDING", "webhook", "evt-0", False, None),
        ("COMPLETED", "RETURNED", "webhook", "evt-2", True, "R10"),
    ]:
        await sql(
            "INSERT INTO transaction_history (transaction_id, from_status, to_status, source,"
            " event_id, applied, reason_code) VALUES (:t, :f, :to, :s, :e, :a, :r)",
            {
                "t": uuid.UUID(txn_id),
                "f": from_status,
                "to": to_status,
                "s": source,
                "e": event,
                "a": applied,
                "r": reason,
            },
        )
    response = await api.get(f"/v1/parties/{party}/transactions/{txn_id}", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "RETURNED"
    assert [
        (h["from"], h["to"], h["source"], h["eventId"], h["applied"], h["reasonCode"])
        for h in body["history"]
    ] == [
        (None, "SUBMITTING", "api", None, True, None),
        ("SUBMITTING", "PENDING", "api", None, True, None),
        ("PENDING", "COMPLETED", "webhook", "evt-1", True, None),
        ("COMPLETED", "PENDING", "webhook", "evt-0", False, None),
        ("COMPLETED", "RETURNED", "webhook", "evt-2", True, "R10"),
    ]
    assert all(h["at"] for h in body["history"])


async def test_another_partys_transaction_is_not_found_under_ones_own_party(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    foreign = await insert(sql, f"p-{uuid.uuid4().hex[:12]}", T0)
    for txn_id in (foreign, str(uuid.uuid4())):
        response = await api.get(f"/v1/parties/{party}/transactions/{txn_id}", headers=headers)
        assert response.status_code == 404
        assert response.json()["code"] == "transaction_not_found"


async def test_a_malformed_transaction_id_answers_422(
    api: httpx.AsyncClient, party: str, headers: dict[str, str]
) -> None:
    response = await api.get(f"/v1/parties/{party}/transactions/42", headers=headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["name"] == "transactionId"
