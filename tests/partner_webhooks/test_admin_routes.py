"""The admin routes of webhook endpoints: the admin scope only, bad input refused with a 4xx and
a stable code, secrets never in a response, the SSRF guard in production, redelivery and the
delivery log."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from app.auth.dev_token import mint_dev_token
from app.config import AppEnv, Settings
from app.partner_webhooks.dispatcher import Dispatcher
from app.partner_webhooks.sealing import keys_of, unseal
from app.partner_webhooks.sender import Outcome, Sender
from app.partner_webhooks.signing import fingerprint
from tests.partner_webhooks.conftest import (
    SECRET_A,
    SECRET_B,
    Api,
    Execute,
    Receiver,
    add_event,
    db_now,
)


def consumer(settings: Settings, party: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_dev_token(settings, party, ttl_seconds=600)}"}


async def test_consumers_get_403_and_anonymous_callers_401(api: Api, settings: Settings) -> None:
    async with api() as http:
        for method, path in [
            ("GET", "/v1/webhook-endpoints"),
            ("POST", "/v1/webhook-endpoints"),
            ("POST", f"/v1/webhook-endpoints/{uuid.uuid4()}/disable"),
            ("GET", f"/v1/webhook-endpoints/{uuid.uuid4()}/attempts"),
        ]:
            answer = await http.request(
                method, path, headers=consumer(settings), json={"url": "https://x.example"}
            )
            assert answer.status_code == 403, (method, path)
            assert answer.json()["code"] == "admin_scope_required"
            anonymous = await http.request(method, path, headers={"Authorization": ""})
            assert anonymous.status_code == 401


async def test_an_endpoint_is_added_listed_changed_disabled_and_enabled_without_its_secrets(
    api: Api, sql: Execute, settings: Settings
) -> None:
    async with api() as http:
        made = await http.post(
            "/v1/webhook-endpoints",
            json={
                "url": "https://hooks.partner.example/fiat?token=abc",
                "description": "back end",
                "eventTypes": ["transaction.completed", "transaction.returned"],
                "secrets": [SECRET_A],
            },
        )
        assert made.status_code == 201, made.text
        body = made.json()
        assert SECRET_A not in made.text
        assert SECRET_A.removeprefix("whsec_") not in made.text
        assert body["secretFingerprints"] == [fingerprint(SECRET_A)]
        assert body["status"] == "ENABLED"
        assert body["source"] == "admin"
        assert body["eventTypes"] == ["transaction.completed", "transaction.returned"]
        endpoint = body["id"]

        listed = await http.get("/v1/webhook-endpoints")
        assert endpoint in [e["id"] for e in listed.json()["data"]]
        assert SECRET_A not in listed.text

        # Rotation: the new secret beside the old one, both signing.
        changed = await http.patch(
            f"/v1/webhook-endpoints/{endpoint}",
            json={"secrets": [SECRET_A, SECRET_B], "eventTypes": None},
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["secretFingerprints"] == [
            fingerprint(SECRET_A),
            fingerprint(SECRET_B),
        ]
        assert changed.json()["eventTypes"] is None
        assert SECRET_B not in changed.text

        off = await http.post(f"/v1/webhook-endpoints/{endpoint}/disable")
        assert (off.json()["status"], off.json()["disabledReason"]) == ("DISABLED", "admin")
        on = await http.post(f"/v1/webhook-endpoints/{endpoint}/enable")
        assert (on.json()["status"], on.json()["disabledReason"]) == ("ENABLED", None)
        one = await http.get(f"/v1/webhook-endpoints/{endpoint}")
        assert one.json()["deliveries"] == {"pending": 0, "delivered": 0, "oldestPendingAt": None}
    stored = await sql(
        "SELECT secrets FROM partner_webhook_endpoints WHERE id = :id", {"id": uuid.UUID(endpoint)}
    )
    # At rest they are sealed (app/partner_webhooks/sealing.py), each opening to its secret.
    assert all(value.startswith("sealed:v1:") for value in stored[0][0])
    assert not any(SECRET_A.removeprefix("whsec_") in value for value in stored[0][0])
    keys = keys_of(settings)
    assert [unseal(v, uuid.UUID(endpoint), keys) for v in stored[0][0]] == [SECRET_A, SECRET_B]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://x.example/"}, "invalid_webhook_url"),
        ({"url": "https://user:pw@x.example/"}, "invalid_webhook_url"),
        ({"url": "not a url"}, "invalid_webhook_url"),
        ({"url": "https://x.example/", "secrets": ["whsec_YQ=="]}, "invalid_webhook_secret"),
        ({"url": "https://x.example/", "secrets": ["nope-not-whsec"]}, "invalid_webhook_secret"),
        ({"url": "https://x.example/"}, "webhook_secret_required"),
        ({"url": "https://x.example/", "eventTypes": ["money.moved"]}, "validation_failed"),
        ({"url": "https://x.example/", "extra": 1}, "validation_failed"),
        ({"secrets": [SECRET_A]}, "validation_failed"),
    ],
)
async def test_bad_input_is_refused_with_a_code_and_changes_nothing(
    body: dict[str, Any], code: str, api: Api, sql: Execute
) -> None:
    before = await sql("SELECT count(*) FROM partner_webhook_endpoints")
    async with api() as http:
        answer = await http.post("/v1/webhook-endpoints", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == code
    for secret in body.get("secrets", []):
        assert secret not in answer.text
    assert await sql("SELECT count(*) FROM partner_webhook_endpoints") == before


async def test_unknown_endpoints_get_404_and_settings_endpoints_keep_their_secrets(
    api: Api, sql: Execute
) -> None:
    async with api() as http:
        missing = uuid.uuid4()
        for method, path, body in [
            ("GET", f"/v1/webhook-endpoints/{missing}", None),
            ("PATCH", f"/v1/webhook-endpoints/{missing}", {"description": "x"}),
            ("POST", f"/v1/webhook-endpoints/{missing}/enable", None),
            ("POST", f"/v1/webhook-endpoints/{missing}/redeliveries", {"eventId": "evt_X"}),
            ("GET", f"/v1/webhook-endpoints/{missing}/attempts", None),
        ]:
            answer = await http.request(method, path, json=body)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["code"] == "webhook_endpoint_not_found"
        assert (await http.get("/v1/webhook-endpoints/not-a-uuid")).status_code == 422

    settings_endpoint = uuid.uuid4()
    await sql(
        "INSERT INTO partner_webhook_endpoints (id, url, source, status) "
        "VALUES (:id, 'https://s.example/', 'settings', 'ENABLED')",
        {"id": settings_endpoint},
    )
    async with api(partner_webhook_secrets=[]) as http:
        answer = await http.patch(
            f"/v1/webhook-endpoints/{settings_endpoint}", json={"secrets": [SECRET_A]}
        )
    assert answer.status_code == 409
    assert answer.json()["code"] == "webhook_endpoint_managed_by_settings"


async def test_production_refuses_private_targets_unless_allowed(api: Api) -> None:
    production = {
        "app_env": AppEnv.PRODUCTION,
        # Production seals own secrets under a key of its own (app/partner_webhooks/sealing.py).
        "partner_webhook_sealing_keys": [SecretStr(base64.b64encode(b"k" * 32).decode())],
    }
    async with api(**production) as http:
        for url in [
            "http://127.0.0.1:9000/h",
            "http://10.0.0.5/h",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/h",
            "https://localhost/h",
        ]:
            answer = await http.post(
                "/v1/webhook-endpoints", json={"url": url, "secrets": [SECRET_A]}
            )
            assert answer.status_code == 422, url
            assert answer.json()["code"] == "webhook_target_not_allowed"
    async with api(**production, partner_webhook_allow_private_targets=True) as http:
        answer = await http.post(
            "/v1/webhook-endpoints", json={"url": "http://10.0.0.5/h", "secrets": [SECRET_A]}
        )
        assert answer.status_code == 201


async def test_the_sender_refuses_what_resolves_to_private_addresses_in_production(
    settings: Settings, receiver: Receiver
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    production = settings.model_copy(update={"app_env": AppEnv.PRODUCTION})
    sender = Sender(production)
    try:
        for url in (receiver.url, f"http://localhost:{port}/hooks"):
            attempt = await sender.send(url, [b"k" * 32], "evt_1", b"{}")
            assert attempt.outcome == Outcome.REFUSED, (url, attempt)
        assert receiver.received == []
    finally:
        await sender.aclose()
    allowed = Sender(production.model_copy(update={"partner_webhook_allow_private_targets": True}))
    try:
        attempt = await allowed.send(f"http://localhost:{port}/hooks", [b"k" * 32], "evt_1", b"{}")
        assert attempt.delivered
    finally:
        await allowed.aclose()


async def test_redelivery_of_one_event_and_of_a_range_and_the_delivery_log(
    api: Api, sql: Execute, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    await sql("UPDATE partner_webhook_endpoints SET status = 'DISABLED'")
    party = f"pw-{uuid.uuid4().hex[:10]}"
    async with api() as http:
        made = await http.post(
            "/v1/webhook-endpoints", json={"url": receiver.url, "secrets": [SECRET_A]}
        )
        endpoint = made.json()["id"]
        ids = [await add_event(sql, party, n=n) for n in range(3)]
        await dispatcher.cycle()
        assert receiver.ids_of(party) == ids

        again = await http.post(
            f"/v1/webhook-endpoints/{endpoint}/redeliveries", json={"eventId": ids[1]}
        )
        assert again.status_code == 202
        assert again.json() == {"events": 1}
        await dispatcher.cycle()
        assert receiver.ids_of(party) == [*ids, ids[1]]

        now = await db_now(sql)
        ranged = await http.post(
            f"/v1/webhook-endpoints/{endpoint}/redeliveries",
            json={
                "since": (now - timedelta(hours=1)).isoformat(),
                "until": (now + timedelta(minutes=1)).isoformat(),
            },
        )
        assert ranged.status_code == 202
        assert ranged.json()["events"] >= 3
        await dispatcher.cycle()
        assert receiver.ids_of(party)[-3:] == ids

        log = await http.get(f"/v1/webhook-endpoints/{endpoint}/attempts", params={"limit": 2})
        assert log.status_code == 200
        page = log.json()
        assert len(page["data"]) == 2
        assert page["data"][0]["outcome"] == "delivered"
        assert page["data"][0]["statusCode"] == 200
        older = await http.get(
            f"/v1/webhook-endpoints/{endpoint}/attempts", params={"before": page["next"]}
        )
        assert [a["id"] for a in older.json()["data"]] < [a["id"] for a in page["data"]]
        per_event = await http.get(
            f"/v1/webhook-endpoints/{endpoint}/attempts", params={"eventId": ids[1]}
        )
        assert [a["attempt"] for a in per_event.json()["data"]] == [3, 2, 1]

        for body, code in [
            ({}, "invalid_redelivery"),
            ({"eventId": ids[0], "since": now.isoformat()}, "invalid_redelivery"),
            ({"since": now.isoformat()}, "invalid_redelivery"),
            (
                {"since": now.isoformat(), "until": (now - timedelta(1)).isoformat()},
                "invalid_redelivery",
            ),
            ({"since": "2026-01-01T00:00:00", "until": now.isoformat()}, "validation_failed"),
            ({"eventId": "evt_NOSUCHEVENT"}, "event_not_found"),
            ({"eventId": "not-an-event"}, "validation_failed"),
        ]:
            refused = await http.post(f"/v1/webhook-endpoints/{endpoint}/redeliveries", json=body)
            assert refused.status_code in (404, 422), (body, refused.text)
            assert refused.json()["code"] == code, body
        bad_page = await http.get(
            f"/v1/webhook-endpoints/{endpoint}/attempts", params={"before": "-1"}
        )
        assert bad_page.status_code == 422
