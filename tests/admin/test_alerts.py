"""Listing and resolving operator alerts: open ones newest first, paged by id; resolving records
who and why, once."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.admin.conftest import ADMIN
from tests.admin.helpers import Execute, add_alert

ALERTS = "/v1/admin/alerts"


async def test_open_alerts_are_listed_newest_first_and_resolved_once(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute
) -> None:
    kind = f"test_kind_{uuid.uuid4().hex[:8]}"
    ids = [await add_alert(sql, kind, f"transaction {n}") for n in range(3)]

    listed = (await api.get(ALERTS, headers=ops, params={"kind": kind})).json()
    assert [a["id"] for a in listed["items"]] == ids[::-1]
    assert listed["items"][0]["resolvedAt"] is None

    response = await api.post(
        f"{ALERTS}/{ids[1]}/resolve", headers=ops, json={"note": "settled with Bakkt"}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["resolvedBy"], body["resolutionNote"]) == (ADMIN, "settled with Bakkt")
    assert body["resolvedAt"] is not None
    still_open = (await api.get(ALERTS, headers=ops, params={"kind": kind})).json()["items"]
    assert [a["id"] for a in still_open] == [ids[2], ids[0]]
    every = (
        await api.get(ALERTS, headers=ops, params={"kind": kind, "includeResolved": "true"})
    ).json()["items"]
    assert [a["id"] for a in every] == ids[::-1]

    again = await api.post(f"{ALERTS}/{ids[1]}/resolve", headers=ops)
    assert again.status_code == 409
    assert again.json()["code"] == "alert_already_resolved"
    row = await sql("SELECT resolution_note FROM operator_alerts WHERE id = :id", {"id": ids[1]})
    assert row[0][0] == "settled with Bakkt"


async def test_pages_follow_the_cursor(
    api: httpx.AsyncClient, ops: dict[str, str], sql: Execute
) -> None:
    kind = f"test_kind_{uuid.uuid4().hex[:8]}"
    ids = [await add_alert(sql, kind, "x") for _ in range(5)]
    seen: list[int] = []
    params: dict[str, Any] = {"kind": kind, "limit": 2}
    while True:
        body = (await api.get(ALERTS, headers=ops, params=params)).json()
        seen += [a["id"] for a in body["items"]]
        if body["nextCursor"] is None:
            break
        params["cursor"] = body["nextCursor"]
    assert seen == ids[::-1]


async def test_an_unknown_alert_is_404(api: httpx.AsyncClient, ops: dict[str, str]) -> None:
    response = await api.post(f"{ALERTS}/{2**63 - 1}/resolve", headers=ops)
    assert response.status_code == 404
    assert response.json()["code"] == "alert_not_found"


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "code"),
    [
        ("GET", ALERTS, {"cursor": "-3"}, 400, "invalid_cursor"),
        ("GET", ALERTS, {"cursor": str(2**63)}, 400, "invalid_cursor"),
        ("GET", ALERTS, {"kind": "a\x00"}, 422, "validation_failed"),
        ("GET", ALERTS, {"kind": "k" * 65}, 422, "validation_failed"),
        ("GET", ALERTS, {"limit": "many"}, 422, "validation_failed"),
        ("POST", f"{ALERTS}/0/resolve", {}, 422, "validation_failed"),
        ("POST", f"{ALERTS}/{2**63}/resolve", {}, 422, "validation_failed"),
    ],
)
async def test_bad_input_is_4xx_with_a_code(
    api: httpx.AsyncClient,
    ops: dict[str, str],
    method: str,
    path: str,
    params: dict[str, Any],
    status: int,
    code: str,
) -> None:
    response = await api.request(method, path, headers=ops, params=params)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
