"""The redaction proof: every route and the webhook receiver driven with known secret values,
every logger at DEBUG, and none of the values in what was written."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from app.auth.dev_token import mint_dev_token
from app.config import DEV_CLIENT_SECRET, DEV_JWT_SECRET, DEV_WEBHOOK_SECRET, Settings
from app.core.logs import guarded_handler
from app.main import _declared_responses
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, with_key
from tests.webhooks.events import URL, encode, fiat, signed_headers

PROCESSOR_TOKEN = f"processor-sandbox-{uuid.uuid4().hex}"
ACCOUNT_NUMBER = "99887766554433"
WIRE_ACCOUNT = "55443322110099"
STATIC_TOKEN = f"static-webhook-token-{uuid.uuid4().hex}"
FORGED_BEARER = f"forged{uuid.uuid4().hex}"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every record of every logger, at DEBUG, through the service's own handler (JSON)."""
    out = io.StringIO()
    handler = guarded_handler("json", out)
    root = logging.getLogger()
    loggers = [root, *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


async def test_no_secret_reaches_a_log_line_on_any_route(
    captured: io.StringIO,
    api_with: object,
    api_settings: Settings,
    auth: TokenFactory,
    sql: Execute,
) -> None:
    # `captured` first: the test's connection is made with every logger at DEBUG already, so
    # SQLAlchemy writes each statement and its parameters too.
    http = await api_with(webhook_static_token=SecretStr(STATIC_TOKEN))  # type: ignore[operator]
    party = f"p-{uuid.uuid4().hex[:12]}"
    bearer = mint_dev_token(api_settings, party)
    headers = {"Authorization": f"Bearer {bearer}"}
    base = f"/v1/parties/{party}"

    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"):
        await http.get(path)
    await http.get("/docs/oauth2-redirect")
    await http.get(base, headers=headers)

    linked = await http.post(
        f"{base}/bank-accounts", json={"processorToken": PROCESSOR_TOKEN}, headers=with_key(headers)
    )
    assert linked.status_code == 202, linked.text
    account_id = linked.json()["id"]
    # Refused bodies that hold the secrets: both shapes at once, a malformed body, a bad type.
    for body in (
        {"processorToken": PROCESSOR_TOKEN, "accountNumber": ACCOUNT_NUMBER},
        {"routingNumber": "021000021", "accountNumber": ACCOUNT_NUMBER + "x"},
    ):
        refused = await http.post(f"{base}/bank-accounts", json=body, headers=with_key(headers))
        assert refused.status_code == 422
    broken = await http.post(
        f"{base}/bank-accounts",
        content=f'{{"accountNumber": "{ACCOUNT_NUMBER}", "processorToken": "{PROCESSOR_TOKEN}"',
        headers={**with_key(headers), "content-type": "application/json"},
    )
    assert broken.status_code in (400, 422)
    other = f"p-{uuid.uuid4().hex[:12]}"
    other_headers = auth(other)
    by_details = await http.post(
        f"/v1/parties/{other}/bank-accounts",
        json={
            "routingNumber": "021000021",
            "accountNumber": ACCOUNT_NUMBER,
            "accountType": "CHECKING",
        },
        headers=with_key(other_headers),
    )
    assert by_details.status_code == 202, by_details.text
    session = await http.post(
        f"{base}/link-sessions", json={"redirectUri": "myapp://linked"}, headers=with_key(headers)
    )
    assert session.status_code < 500

    await sql(
        "UPDATE bank_accounts SET status = 'LINKED', bank_name = 'First Platypus Bank', "
        "account_mask = '4433', account_type = 'CHECKING' WHERE id = :id",
        {"id": account_id},
    )
    await http.get(f"{base}/bank-accounts", headers=headers)
    await http.get(f"{base}/bank-accounts/{account_id}", headers=headers)
    deposit = await http.post(
        f"{base}/deposits", json={"amount": "25.00"}, headers=with_key(headers, "dep-redact-1")
    )
    assert deposit.status_code == 202, deposit.text
    # A replay and a reuse with another body (409/422 paths of the idempotency layer).
    await http.post(
        f"{base}/deposits", json={"amount": "25.00"}, headers=with_key(headers, "dep-redact-1")
    )
    await http.post(
        f"{base}/deposits", json={"amount": "26.00"}, headers=with_key(headers, "dep-redact-1")
    )
    await http.post(
        f"{base}/withdrawals",
        json={
            "amount": "12.00",
            "method": "WIRE",
            "destination": {
                "routingNumber": "021000021",
                "accountNumber": WIRE_ACCOUNT,
                "bankName": "First Platypus Bank",
            },
        },
        headers=with_key(headers),
    )
    await http.post(f"{base}/withdrawals", json={"amount": "10.00"}, headers=with_key(headers))
    listed = await http.get(f"{base}/transactions", headers=headers)
    await http.get(f"{base}/transactions/{deposit.json()['id']}", headers=headers)
    assert listed.status_code == 200
    await http.get(f"{base}/balance", headers=headers)
    await http.get(f"{base}/wire-instructions", headers=headers)
    # A forged token and a token for another party.
    await http.get(base, headers={"Authorization": f"Bearer {FORGED_BEARER}"})
    await http.get(f"/v1/parties/{other}", headers=headers)

    # The admin routes, with notes that carry secrets (an operator pasting what a customer said).
    admin = {"Authorization": f"Bearer {mint_dev_token(api_settings, 'ops', admin=True)}"}
    note = {"note": f"customer sent {PROCESSOR_TOKEN} and account {ACCOUNT_NUMBER}"}
    txn = deposit.json()["id"]
    await http.get("/v1/admin/transactions", params={"status": "PENDING"}, headers=admin)
    await http.get(f"/v1/admin/transactions/{txn}", headers=admin)
    await http.post(f"/v1/admin/transactions/{txn}/sync", json=note, headers=with_key(admin))
    await http.post(f"/v1/admin/transactions/{txn}/release", json=note, headers=with_key(admin))
    await http.get(f"/v1/admin/bank-accounts/{account_id}", headers=admin)
    await http.post(
        f"/v1/admin/bank-accounts/{account_id}/disable",
        json={"reason": note["note"]},
        headers=with_key(admin),
    )
    await http.post(
        f"/v1/admin/bank-accounts/{account_id}/enable", json=note, headers=with_key(admin)
    )
    alerts = await http.get("/v1/admin/alerts", headers=admin)
    assert alerts.status_code == 200, alerts.text
    await http.post("/v1/admin/alerts/999999999/resolve", json=note, headers=with_key(admin))
    await http.delete(f"{base}/bank-accounts/{account_id}", headers=with_key(headers))

    now = datetime.now(UTC)
    event = fiat(
        f"evt-{uuid.uuid4().hex}",
        party=party,
        ref=deposit.json()["id"],
        kind="ACH_DEPOSIT",
        status="COMPLETE",
        amount="25.00",
        at=now,
    )
    body = encode(event)
    signed = {**signed_headers(body, msg_id=event["requestId"]), "X-Webhook-Token": STATIC_TOKEN}
    assert (await http.post(URL, content=body, headers=signed)).status_code == 200
    assert (await http.post(URL, content=body, headers=signed)).status_code == 200
    wrong_token = {**signed, "X-Webhook-Token": STATIC_TOKEN + "x"}
    assert (await http.post(URL, content=body, headers=wrong_token)).status_code == 401
    bad_signature = {**signed, "webhook-signature": "v1,AAAA" + STATIC_TOKEN}
    assert (await http.post(URL, content=body, headers=bad_signature)).status_code == 401
    events = await http.get("/v1/admin/webhook-events", headers=admin)
    assert events.status_code == 200, events.text
    stored = events.json()["items"][0]["id"] if events.json().get("items") else 999999999
    await http.post(f"/v1/admin/webhook-events/{stored}/replay", json=note, headers=with_key(admin))

    written = captured.getvalue()
    lines = [json.loads(line) for line in written.splitlines()]
    for secret in (
        bearer,
        FORGED_BEARER,
        PROCESSOR_TOKEN,
        PROCESSOR_TOKEN.removeprefix("processor-sandbox-"),
        ACCOUNT_NUMBER,
        WIRE_ACCOUNT,
        STATIC_TOKEN,
        DEV_CLIENT_SECRET,
        DEV_JWT_SECRET,
        DEV_WEBHOOK_SECRET,
        DEV_WEBHOOK_SECRET.removeprefix("whsec_"),
    ):
        assert secret not in written, secret

    # Every route was driven: its template is on an access line, with the request's id.
    access = [line for line in lines if line["logger"] == "app.access"]
    seen = {(line["method"], line["route"]) for line in access}
    app = http._transport.app  # type: ignore[attr-defined]
    for route, method, _ in _declared_responses(app):
        assert (method, route) in seen, (method, route)
    assert all(line.get("request_id") for line in access)
    assert {line["status"] for line in access} >= {200, 202, 401, 422}
    assert any(line["logger"] == "sqlalchemy.engine.Engine" for line in lines)
