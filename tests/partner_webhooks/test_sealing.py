"""Admin endpoints' own signing secrets are sealed at rest (AES-256-GCM under
PARTNER_WEBHOOK_SEALING_KEYS): what the database holds does not sign, a value moved to another
row or altered does not open, a rotation re-seals every row, production needs a key of its own,
and deliveries still verify as a real receiver verifies them."""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from app.config import AppEnv, Settings
from app.core.metrics import Metrics
from app.partner_webhooks.dispatcher import Dispatcher
from app.partner_webhooks.sealing import (
    DEV_SEALING_KEY,
    SealingError,
    keys_of,
    seal,
    sealed_under,
    sealing_key,
    unseal,
)
from app.partner_webhooks.service import reseal_secrets
from tests.foundation.test_settings import REAL_SECRETS
from tests.partner_webhooks.conftest import (
    SECRET_A,
    SECRET_B,
    Api,
    Execute,
    Receiver,
    add_endpoint,
    add_event,
)

OLD_KEY = base64.b64encode(b"o" * 32).decode()
NEW_KEY = base64.b64encode(b"n" * 32).decode()


def _with_keys(settings: Settings, *keys: str) -> Settings:
    return settings.model_copy(
        update={"partner_webhook_sealing_keys": [SecretStr(k) for k in keys]}
    )


def test_a_sealed_secret_opens_only_on_its_own_endpoint_and_unaltered() -> None:
    keys = [sealing_key(NEW_KEY)]
    mine, other = uuid.uuid4(), uuid.uuid4()
    sealed = seal(SECRET_A, mine, keys)
    assert SECRET_A not in sealed
    assert SECRET_A.removeprefix("whsec_") not in sealed
    assert seal(SECRET_A, mine, keys) != sealed  # a fresh nonce each time
    assert unseal(sealed, mine, keys) == SECRET_A
    with pytest.raises(SealingError, match="does not open"):
        unseal(sealed, other, keys)
    altered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(SealingError, match="does not open"):
        unseal(altered, mine, keys)
    with pytest.raises(SealingError, match="lacks"):
        unseal(sealed, mine, [sealing_key(OLD_KEY)])
    # A value written before sealing existed is read as it is.
    assert unseal(SECRET_B, mine, keys) == SECRET_B


def test_a_sealing_error_and_a_keys_repr_never_show_a_key() -> None:
    key = sealing_key(NEW_KEY)
    assert NEW_KEY not in repr(key)
    assert "n" * 32 not in repr(key)
    with pytest.raises(SealingError) as caught:
        unseal(seal(SECRET_A, uuid.uuid4(), [key]), uuid.uuid4(), [key])
    assert SECRET_A not in str(caught.value)
    assert NEW_KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64!", "is not base64"),
        (base64.b64encode(b"short").decode(), "is 5 bytes, not 32 (AES-256)"),
    ],
)
def test_a_bad_sealing_key_is_refused_by_its_position(value: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, partner_webhook_sealing_keys=f"{NEW_KEY},{value}")  # type: ignore[call-arg]
    assert f"key 2 of 2 {message}" in str(caught.value)
    # The message names the position; the CLI prints settings errors without the input
    # (tests/foundation/test_cli_config_errors.py).
    assert [e["msg"] for e in caught.value.errors()] == [f"Value error, key 2 of 2 {message}"]


def test_production_refuses_the_development_sealing_key() -> None:
    with pytest.raises(ValidationError, match="key 1 is the development key"):
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            app_env="production",
            partner_webhook_sealing_keys=DEV_SEALING_KEY,
            **REAL_SECRETS,
        )
    accepted = Settings(  # type: ignore[call-arg]
        _env_file=None, app_env="production", partner_webhook_sealing_keys=NEW_KEY, **REAL_SECRETS
    )
    assert [k.kid for k in keys_of(accepted)] == [sealing_key(NEW_KEY).kid]


def test_keys_outside_production_default_to_the_development_key(settings: Settings) -> None:
    dev = settings.model_copy(update={"partner_webhook_sealing_keys": []})
    assert [k.kid for k in keys_of(dev)] == [sealing_key(DEV_SEALING_KEY).kid]
    prod = dev.model_copy(update={"app_env": AppEnv.PRODUCTION})
    assert keys_of(prod) == []


async def test_production_without_a_sealing_key_refuses_own_secrets_and_changes_nothing(
    api: Api, sql: Execute
) -> None:
    before = await sql("SELECT count(*) FROM partner_webhook_endpoints")
    async with api(
        app_env=AppEnv.PRODUCTION,
        partner_webhook_sealing_keys=[],
        partner_webhook_secrets=[SecretStr(SECRET_B)],
    ) as http:
        refused = await http.post(
            "/v1/webhook-endpoints",
            json={"url": "https://hooks.partner.example/in", "secrets": [SECRET_A]},
        )
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "webhook_secret_sealing_unavailable"
        assert SECRET_A not in refused.text
        assert await sql("SELECT count(*) FROM partner_webhook_endpoints") == before
        # Signing with PARTNER_WEBHOOK_SECRETS needs no sealing.
        plain = await http.post(
            "/v1/webhook-endpoints", json={"url": "https://hooks.partner.example/in"}
        )
        assert plain.status_code == 201, plain.text


async def test_after_a_rotation_reseal_moves_every_row_to_the_new_key_and_deliveries_verify(
    sql: Execute,
    factory: Any,
    settings: Settings,
    wsettings: Settings,
    receiver: Receiver,
) -> None:
    old = _with_keys(settings, OLD_KEY)
    endpoint = await add_endpoint(sql, receiver.url, secrets=["placeholder"])
    # One row from before sealing (plain), one secret under the old key.
    await sql(
        "UPDATE partner_webhook_endpoints SET secrets = :s WHERE id = :id",
        {"id": endpoint, "s": [SECRET_A, seal(SECRET_B, endpoint, keys_of(old))]},
    )
    rotated = _with_keys(settings, NEW_KEY, OLD_KEY)

    async with factory() as session:
        done = await reseal_secrets(session, rotated)

    # Rows other tests committed may be resealed too: this endpoint's are what is pinned.
    assert done.resealed >= 2
    assert not [u for u in done.unreadable if str(endpoint) in u]
    [row] = await sql(
        "SELECT secrets FROM partner_webhook_endpoints WHERE id = :id", {"id": endpoint}
    )
    new_kid = sealing_key(NEW_KEY).kid
    assert [sealed_under(v) for v in row[0]] == [new_kid, new_kid]
    async with factory() as session:
        again = await reseal_secrets(session, rotated)
    assert again.current >= 2
    [unchanged] = await sql(
        "SELECT secrets FROM partner_webhook_endpoints WHERE id = :id", {"id": endpoint}
    )
    assert unchanged[0] == row[0]

    # The old key can go now: the dispatcher signs with both secrets, opened with the new key.
    only_new = _with_keys(wsettings, NEW_KEY)
    dispatcher = Dispatcher(factory, only_new, metrics=Metrics())
    try:
        party = f"seal-{uuid.uuid4().hex[:8]}"
        event = await add_event(sql, party)
        await dispatcher.cycle()
    finally:
        await dispatcher.aclose()
    assert receiver.ids_of(party) == [event]
    signatures = receiver.received[-1].headers["webhook-signature"].split(" ")
    assert len(signatures) == 2


async def test_a_secret_whose_key_is_gone_stops_deliveries_with_a_reason_and_lists_unreadable(
    api: Api, sql: Execute, factory: Any, wsettings: Settings, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(sql, receiver.url, secrets=["placeholder"])
    stranger = [sealing_key(base64.b64encode(os.urandom(32)).decode())]
    await sql(
        "UPDATE partner_webhook_endpoints SET secrets = :s WHERE id = :id",
        {"id": endpoint, "s": [seal(SECRET_A, endpoint, stranger)]},
    )
    party = f"seal-{uuid.uuid4().hex[:8]}"
    await add_event(sql, party)
    dispatcher = Dispatcher(factory, wsettings, metrics=Metrics())
    try:
        await dispatcher.cycle()
    finally:
        await dispatcher.aclose()

    assert receiver.ids_of(party) == []
    [attempt] = await sql(
        "SELECT outcome, error FROM partner_webhook_attempts WHERE endpoint_id = :id",
        {"id": endpoint},
    )
    assert attempt[0] == "refused"
    assert "cannot be opened" in attempt[1]
    async with api() as http:
        listed = await http.get(f"/v1/webhook-endpoints/{endpoint}")
    assert listed.json()["secretFingerprints"] == ["unreadable"]
