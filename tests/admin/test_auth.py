"""Every admin route needs the admin scope: a consumer's token gets 403 `admin_scope_required`
and changes nothing; no token gets 401."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.admin.conftest import TokenFactory
from tests.admin.helpers import Execute, add_account, add_alert, add_transfer, history

SOME_ID = str(uuid.uuid4())
ROUTES = [
    ("GET", "/v1/admin/transactions"),
    ("GET", f"/v1/admin/transactions/{SOME_ID}"),
    ("POST", f"/v1/admin/transactions/{SOME_ID}/sync"),
    ("POST", f"/v1/admin/transactions/{SOME_ID}/release"),
    ("GET", "/v1/admin/webhook-events"),
    ("POST", "/v1/admin/webhook-events/1/replay"),
    ("GET", f"/v1/admin/bank-accounts/{SOME_ID}"),
    ("POST", f"/v1/admin/bank-accounts/{SOME_ID}/disable"),
    ("POST", f"/v1/admin/bank-accounts/{SOME_ID}/enable"),
    ("GET", "/v1/admin/alerts"),
    ("POST", "/v1/admin/alerts/1/resolve"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_consumer_token_gets_403_admin_scope_required(
    api: httpx.AsyncClient, token: TokenFactory, party: str, method: str, path: str
) -> None:
    response = await api.request(method, path, headers=token(party), json={"reason": "x"})
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "admin_scope_required"


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_no_token_gets_401(api: httpx.AsyncClient, method: str, path: str) -> None:
    response = await api.request(method, path)
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_required"


async def test_a_consumer_token_changes_nothing(
    api: httpx.AsyncClient, token: TokenFactory, sql: Execute, party: str
) -> None:
    account = await add_account(sql, party)
    row = await add_transfer(sql, party, status="PENDING", bank_account_id=account)
    await sql("UPDATE transactions SET held_for_review = true WHERE id = :id", {"id": row.id})
    alert = await add_alert(sql, "transaction_overdue", f"transaction {row.id}")
    mine = token(party)

    for path in (
        f"/v1/admin/transactions/{row.id}/release",
        f"/v1/admin/transactions/{row.id}/sync",
        f"/v1/admin/bank-accounts/{account}/disable",
        f"/v1/admin/alerts/{alert}/resolve",
    ):
        response = await api.post(path, headers=mine, json={"reason": "mine"})
        assert response.status_code == 403, (path, response.text)

    txn = await sql("SELECT held_for_review FROM transactions WHERE id = :id", {"id": row.id})
    assert txn[0][0] is True
    assert len(await history(sql, "transaction_history", "transaction_id", row.id)) == 1
    status = await sql("SELECT status FROM bank_accounts WHERE id = :id", {"id": account})
    assert status[0][0] == "LINKED"
    resolved = await sql("SELECT resolved_at FROM operator_alerts WHERE id = :id", {"id": alert})
    assert resolved[0][0] is None


async def test_an_admin_token_without_a_subject_may_read_but_not_act(
    api: httpx.AsyncClient, admin_settings: object, party: str, sql: Execute
) -> None:
    import time

    import jwt

    from app.config import Settings

    assert isinstance(admin_settings, Settings)
    secret = admin_settings.auth_jwt_secret
    assert secret is not None
    now = int(time.time())
    claims = {
        "iss": admin_settings.auth_issuer,
        "aud": admin_settings.auth_audience,
        "iat": now,
        "exp": now + 600,
        "scope": admin_settings.auth_admin_scope,
    }
    headers = {"Authorization": "Bearer " + jwt.encode(claims, secret.get_secret_value(), "HS256")}
    alert = await add_alert(sql, "transaction_overdue", f"party {party}")

    assert (await api.get("/v1/admin/alerts", headers=headers)).status_code == 200
    response = await api.post(f"/v1/admin/alerts/{alert}/resolve", headers=headers)
    assert response.status_code == 403
    assert response.json()["code"] == "admin_subject_required"
