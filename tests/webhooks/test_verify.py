"""Who may post a webhook: Standard Webhooks signatures, rotation, tolerance, token, allow-list."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import DEV_WEBHOOK_SECRET, webhook_secret_key
from app.webhooks.models import WebhookEvent
from app.webhooks.verify import (
    WebhookHeadersMissing,
    WebhookSignatureInvalid,
    WebhookSourceNotAllowed,
    WebhookTimestampInvalid,
    WebhookTokenInvalid,
    WebhookVerifier,
    sign,
)
from tests.webhooks.conftest import HarnessFactory
from tests.webhooks.events import T0, URL, encode, new_secret, party_event, signed_headers

BODY = encode(
    party_event("evt-sig", party="sig-party", status="ACTIVE", reason="ENROLLMENT", at=T0)
)
NOW = 1_790_000_000


def _check(verifier: WebhookVerifier, **overrides: object) -> None:
    args: dict[str, object] = {
        "msg_id": "evt-sig",
        "timestamp": str(NOW),
        "signature": sign(webhook_secret_key(DEV_WEBHOOK_SECRET), "evt-sig", NOW, BODY),
        "body": BODY,
        "now": float(NOW),
    }
    args.update(overrides)
    verifier.check_signature(**args)  # type: ignore[arg-type]


DEV = WebhookVerifier(secrets=[DEV_WEBHOOK_SECRET])


def test_a_valid_signature_passes() -> None:
    _check(DEV)


def test_the_signature_is_the_standard_webhooks_one() -> None:
    # The published Standard Webhooks test vector.
    key = webhook_secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert (
        sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_a_signature_by_another_secret_is_refused() -> None:
    other = sign(webhook_secret_key(new_secret()), "evt-sig", NOW, BODY)
    with pytest.raises(WebhookSignatureInvalid):
        _check(DEV, signature=other)


def test_both_secrets_are_accepted_during_a_rotation() -> None:
    old, new = DEV_WEBHOOK_SECRET, new_secret()
    rotating = WebhookVerifier(secrets=[old, new])
    _check(rotating, signature=sign(webhook_secret_key(old), "evt-sig", NOW, BODY))
    _check(rotating, signature=sign(webhook_secret_key(new), "evt-sig", NOW, BODY))
    after = WebhookVerifier(secrets=[new])
    with pytest.raises(WebhookSignatureInvalid):
        _check(after, signature=sign(webhook_secret_key(old), "evt-sig", NOW, BODY))


def test_one_matching_signature_among_several_is_enough() -> None:
    good = sign(webhook_secret_key(DEV_WEBHOOK_SECRET), "evt-sig", NOW, BODY)
    bad = sign(webhook_secret_key(new_secret()), "evt-sig", NOW, BODY)
    _check(DEV, signature=f"{bad} v1a,AAAA {good}")


@pytest.mark.parametrize("skew", [-301, 301, -3600, 86_400])
def test_stale_and_future_timestamps_are_refused(skew: int) -> None:
    ts = NOW + skew
    signature = sign(webhook_secret_key(DEV_WEBHOOK_SECRET), "evt-sig", ts, BODY)
    with pytest.raises(WebhookTimestampInvalid):
        _check(DEV, timestamp=str(ts), signature=signature)


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_timestamps_within_five_minutes_pass(skew: int) -> None:
    ts = NOW + skew
    _check(
        DEV,
        timestamp=str(ts),
        signature=sign(webhook_secret_key(DEV_WEBHOOK_SECRET), "evt-sig", ts, BODY),
    )


def test_a_timestamp_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(WebhookTimestampInvalid):
        _check(DEV, timestamp="2026-11-20T15:00:00Z")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b.replace(b"ACTIVE", b"CLOSED"),
        lambda b: b + b" ",
        lambda b: b[:-1],
    ],
)
def test_a_tampered_body_is_refused(tamper: object) -> None:
    with pytest.raises(WebhookSignatureInvalid):
        _check(DEV, body=tamper(BODY))  # type: ignore[operator]


def test_a_signature_over_another_id_or_time_is_refused() -> None:
    with pytest.raises(WebhookSignatureInvalid):
        _check(DEV, msg_id="evt-other")
    with pytest.raises(WebhookSignatureInvalid):
        _check(DEV, timestamp=str(NOW + 1))


@pytest.mark.parametrize("missing", ["msg_id", "timestamp", "signature"])
def test_missing_headers_are_refused(missing: str) -> None:
    with pytest.raises(WebhookHeadersMissing):
        _check(DEV, **{missing: None})


@pytest.mark.parametrize("garbage", ["", "v1,", "v2,abc", "not-a-signature"])
def test_signature_headers_without_a_v1_signature_are_refused(garbage: str) -> None:
    with pytest.raises((WebhookSignatureInvalid, WebhookHeadersMissing)):
        _check(DEV, signature=garbage)


def test_a_malformed_secret_is_refused_when_the_verifier_is_built() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        WebhookVerifier(secrets=["whsec_not base64!"])


def test_the_verifier_parses_secrets_with_the_one_config_parser() -> None:
    # One parser of `whsec_` secrets (app.config): what Settings refuses, the verifier refuses.
    from app.webhooks import verify

    assert not hasattr(verify, "secret_key")
    bare = DEV_WEBHOOK_SECRET.removeprefix("whsec_")
    with pytest.raises(ValueError, match="whsec_"):
        webhook_secret_key(bare)
    with pytest.raises(ValueError, match="whsec_"):
        WebhookVerifier(secrets=[bare])


def test_the_allow_list_takes_addresses_and_networks() -> None:
    verifier = WebhookVerifier(
        secrets=[], allowed_ips=["10.1.2.3", "192.168.0.0/16", "2001:db8::/32"]
    )
    for ok in ["10.1.2.3", "192.168.44.5", "::ffff:192.168.1.1", "2001:db8::7"]:
        verifier.check_source(ok)
    for refused in ["10.1.2.4", "8.8.8.8", None, "not-an-ip", "2001:db9::1"]:
        with pytest.raises(WebhookSourceNotAllowed):
            verifier.check_source(refused)


def test_the_static_token_must_match_exactly() -> None:
    verifier = WebhookVerifier(secrets=[], static_token="s3cr3t-token")
    verifier.check_token("s3cr3t-token")
    for wrong in [None, "", "s3cr3t-token ", "S3CR3T-TOKEN"]:
        with pytest.raises(WebhookTokenInvalid):
            verifier.check_token(wrong)


# -- over HTTP -----------------------------------------------------------------------------------


async def _stored(session: AsyncSession) -> int:
    return (
        await session.execute(
            select(func.count())
            .select_from(WebhookEvent)
            .where(WebhookEvent.request_id == "evt-sig")
        )
    ).scalar_one()


async def test_a_signed_delivery_is_accepted(
    harness: HarnessFactory, session: AsyncSession
) -> None:
    async with harness() as h:
        response = await h.http.post(
            URL, content=BODY, headers=signed_headers(BODY, msg_id="evt-sig")
        )
    assert response.status_code == 200, response.text
    assert response.json()["requestId"] == "evt-sig"
    assert await _stored(session) == 1


def _stale() -> dict[str, str]:
    return signed_headers(BODY, msg_id="evt-sig", timestamp=int(time.time()) - 600)


def _future() -> dict[str, str]:
    return signed_headers(BODY, msg_id="evt-sig", timestamp=int(time.time()) + 600)


def _wrong_secret() -> dict[str, str]:
    return signed_headers(BODY, msg_id="evt-sig", secrets=[new_secret()])


def _garbage_signature() -> dict[str, str]:
    return {**signed_headers(BODY, msg_id="evt-sig"), "webhook-signature": "v1,AAAA"}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        (_wrong_secret, "webhook_signature_invalid"),
        (_stale, "webhook_timestamp_invalid"),
        (_future, "webhook_timestamp_invalid"),
        (lambda: {"content-type": "application/json"}, "webhook_headers_missing"),
        (_garbage_signature, "webhook_signature_invalid"),
    ],
)
async def test_a_refused_delivery_gets_401_is_counted_and_not_stored(
    harness: HarnessFactory, session: AsyncSession, headers: object, code: str
) -> None:
    async with harness() as h:
        response = await h.http.post(URL, content=BODY, headers=headers())  # type: ignore[operator]
        assert h.app.state.metrics.value("webhooks_rejected_total", reason=code) == 1
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert await _stored(session) == 0


async def test_a_tampered_body_over_http_is_refused(
    harness: HarnessFactory, session: AsyncSession
) -> None:
    headers = signed_headers(BODY, msg_id="evt-sig")
    tampered = BODY.replace(b"ACTIVE", b"CLOSED")
    async with harness() as h:
        response = await h.http.post(URL, content=tampered, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "webhook_signature_invalid"
    assert await _stored(session) == 0


async def test_rotation_over_http_accepts_old_and_new_while_both_are_configured(
    harness: HarnessFactory,
) -> None:
    old, new = DEV_WEBHOOK_SECRET, new_secret()
    both = [SecretStr(old), SecretStr(new)]
    async with harness(bakkt_webhook_secrets=both) as h:
        for i, secret in enumerate([old, new]):
            body = encode(
                party_event(
                    f"evt-rot-{i}", party="rot", status="ACTIVE", reason="ENROLLMENT", at=T0
                )
            )
            response = await h.http.post(
                URL,
                content=body,
                headers=signed_headers(body, msg_id=f"evt-rot-{i}", secrets=[secret]),
            )
            assert response.status_code == 200, response.text
    async with harness(bakkt_webhook_secrets=[SecretStr(new)]) as h:
        body = encode(
            party_event("evt-rot-9", party="rot", status="ACTIVE", reason="ENROLLMENT", at=T0)
        )
        response = await h.http.post(
            URL, content=body, headers=signed_headers(body, msg_id="evt-rot-9", secrets=[old])
        )
        assert response.status_code == 401


async def test_static_token_off_means_no_token_needed_and_on_means_required(
    harness: HarnessFactory,
) -> None:
    headers = signed_headers(BODY, msg_id="evt-sig")
    async with harness() as h:
        assert (await h.http.post(URL, content=BODY, headers=headers)).status_code == 200
    async with harness(webhook_static_token=SecretStr("tok-123456")) as h:
        missing = await h.http.post(URL, content=BODY, headers=headers)
        wrong = await h.http.post(URL, content=BODY, headers={**headers, "x-webhook-token": "nope"})
        right = await h.http.post(
            URL, content=BODY, headers={**headers, "x-webhook-token": "tok-123456"}
        )
    assert (missing.status_code, missing.json()["code"]) == (401, "webhook_token_invalid")
    assert (wrong.status_code, wrong.json()["code"]) == (401, "webhook_token_invalid")
    assert right.status_code == 200


async def test_token_alone_without_hmac_is_enough_when_no_secret_is_configured(
    harness: HarnessFactory,
) -> None:
    async with harness(bakkt_webhook_secrets=[], webhook_static_token=SecretStr("tok-123456")) as h:
        ok = await h.http.post(URL, content=BODY, headers={"x-webhook-token": "tok-123456"})
        refused = await h.http.post(URL, content=BODY)
    assert ok.status_code == 200, ok.text
    assert refused.status_code == 401


async def test_no_verification_configured_refuses_everything(harness: HarnessFactory) -> None:
    async with harness(bakkt_webhook_secrets=[]) as h:
        response = await h.http.post(
            URL, content=BODY, headers=signed_headers(BODY, msg_id="evt-sig")
        )
    assert response.status_code == 401
    assert response.json()["code"] == "webhook_verification_unconfigured"


async def test_ip_allow_list_off_accepts_any_source_and_on_only_listed_ones(
    harness: HarnessFactory,
) -> None:
    headers = signed_headers(BODY, msg_id="evt-sig")
    async with harness(client_ip="203.0.113.9") as h:
        assert (await h.http.post(URL, content=BODY, headers=headers)).status_code == 200
    async with harness(client_ip="203.0.113.9", webhook_allowed_ips=["198.51.100.0/24"]) as h:
        refused = await h.http.post(URL, content=BODY, headers=headers)
        assert (
            h.app.state.metrics.value(
                "webhooks_rejected_total", reason="webhook_source_not_allowed"
            )
            == 1
        )
    async with harness(client_ip="198.51.100.77", webhook_allowed_ips=["198.51.100.0/24"]) as h:
        allowed = await h.http.post(URL, content=BODY, headers=headers)
    assert (refused.status_code, refused.json()["code"]) == (401, "webhook_source_not_allowed")
    assert allowed.status_code == 200


async def test_token_and_allow_list_and_hmac_together_all_must_pass(
    harness: HarnessFactory,
) -> None:
    headers = {**signed_headers(BODY, msg_id="evt-sig"), "x-webhook-token": "tok-123456"}
    options = {
        "webhook_static_token": SecretStr("tok-123456"),
        "webhook_allowed_ips": ["10.0.0.0/8"],
    }
    async with harness(client_ip="10.9.8.7", **options) as h:
        ok = await h.http.post(URL, content=BODY, headers=headers)
        bad_sig = await h.http.post(URL, content=BODY + b" ", headers=headers)
    async with harness(client_ip="11.0.0.1", **options) as h:
        bad_ip = await h.http.post(URL, content=BODY, headers=headers)
    assert ok.status_code == 200
    assert bad_sig.json()["code"] == "webhook_signature_invalid"
    assert bad_ip.json()["code"] == "webhook_source_not_allowed"


async def test_a_body_over_the_webhook_cap_gets_413_before_verification(
    harness: HarnessFactory, session: AsyncSession
) -> None:
    big = json.dumps({"requestId": "evt-big", "pad": "x" * 5000}).encode()
    async with harness(webhook_max_body_bytes=4096) as h:
        response = await h.http.post(
            URL, content=big, headers=signed_headers(big, msg_id="evt-big")
        )
        assert h.app.state.metrics.value("webhooks_rejected_total", reason="payload_too_large") == 1
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_the_openapi_document_lists_the_refusals(harness: HarnessFactory) -> None:
    async with harness() as h:
        spec = (await h.http.get("/openapi.json")).json()
    responses = spec["paths"]["/webhooks/bakkt"]["post"]["responses"]
    assert {"200", "401", "413"} <= set(responses)
    assert "webhook_signature_invalid" in responses["401"]["description"]
