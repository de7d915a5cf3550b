"""Who may post a webhook: checked on the raw bytes, before anything is parsed or stored.

Bakkt publishes nothing about how its webhooks are authenticated; this follows the assumption in
docs/bakkt-contract.md A6: the Standard Webhooks HMAC scheme by default, plus an optional
static header token and an optional source-IP allow-list, each switched on by settings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import FastAPI, Request

from app.bakkt.webhooks import (
    WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
    WEBHOOK_TOKEN_HEADER,
)
from app.config import Settings, webhook_secret_key
from app.core.metrics import Metrics
from app.errors import PayloadTooLarge, Unauthorized

logger = logging.getLogger("app.webhooks")

# Standard Webhooks' default: a captured delivery cannot be replayed later than this.
TIMESTAMP_TOLERANCE_SECONDS = 300
TOKEN_HEADER = WEBHOOK_TOKEN_HEADER
# Stored with the event: enough to re-check a signature or trace a delivery, and no secret.
KEPT_HEADERS = (
    WEBHOOK_ID_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    "content-type",
    "user-agent",
    "x-request-id",
)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookRejected(Unauthorized):
    code = "webhook_rejected"
    title = "Webhook rejected"


class WebhookHeadersMissing(WebhookRejected):
    code = "webhook_headers_missing"
    title = "Webhook signature headers missing"


class WebhookTimestampInvalid(WebhookRejected):
    code = "webhook_timestamp_invalid"
    title = "Webhook timestamp missing, malformed or outside the tolerance"


class WebhookSignatureInvalid(WebhookRejected):
    code = "webhook_signature_invalid"
    title = "Webhook signature does not match"


class WebhookTokenInvalid(WebhookRejected):
    code = "webhook_token_invalid"
    title = "Webhook token missing or wrong"


class WebhookSourceNotAllowed(WebhookRejected):
    code = "webhook_source_not_allowed"
    title = "Webhook source address not allowed"


class WebhookVerificationUnconfigured(WebhookRejected):
    code = "webhook_verification_unconfigured"
    title = "No webhook verification is configured"


class WebhookTooLarge(PayloadTooLarge):
    code = "payload_too_large"
    title = "Webhook body too large"


REJECTIONS: tuple[type[WebhookRejected], ...] = (
    WebhookHeadersMissing,
    WebhookTimestampInvalid,
    WebhookSignatureInvalid,
    WebhookTokenInvalid,
    WebhookSourceNotAllowed,
    WebhookVerificationUnconfigured,
)


def sign(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """One `v1,<base64>` signature, as the sender computes it (the tests sign with this)."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    """A delivery that passed every configured check, with its raw body."""

    body: bytes
    webhook_id: str | None
    headers: dict[str, str]
    source_ip: str | None
    received_at: datetime


class WebhookVerifier:
    def __init__(
        self,
        *,
        secrets: Sequence[str],
        static_token: str | None = None,
        allowed_ips: Sequence[str] = (),
        max_body_bytes: int = 256 * 1024,
        tolerance_seconds: int = TIMESTAMP_TOLERANCE_SECONDS,
    ) -> None:
        # The one parser of `whsec_` secrets; Settings validated them already at start.
        self._keys = [webhook_secret_key(s) for s in secrets]
        self._token = static_token.encode() if static_token else None
        self._networks: list[IpNetwork] = []
        for entry in allowed_ips:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(
                    f"WEBHOOK_ALLOWED_IPS holds {entry!r}, not an IP or CIDR"
                ) from None
        self.max_body_bytes = max_body_bytes
        self.tolerance_seconds = tolerance_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookVerifier:
        token = settings.webhook_static_token
        return cls(
            secrets=[s.get_secret_value() for s in settings.bakkt_webhook_secrets],
            static_token=token.get_secret_value() if token else None,
            allowed_ips=settings.webhook_allowed_ips,
            max_body_bytes=settings.webhook_max_body_bytes,
        )

    @property
    def configured(self) -> bool:
        return bool(self._keys or self._token or self._networks)

    def check_source(self, host: str | None) -> None:
        if not self._networks:
            return
        try:
            address = ipaddress.ip_address(host or "")
        except ValueError:
            raise WebhookSourceNotAllowed("The source address is not an IP address.") from None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not any(address in network for network in self._networks):
            raise WebhookSourceNotAllowed("The source address is not on the allow-list.")

    def check_token(self, presented: str | None) -> None:
        if self._token is None:
            return
        if presented is None or not hmac.compare_digest(presented.encode(), self._token):
            raise WebhookTokenInvalid("The webhook token header is missing or wrong.")

    def check_signature(
        self,
        *,
        msg_id: str | None,
        timestamp: str | None,
        signature: str | None,
        body: bytes,
        now: float | None = None,
    ) -> None:
        if not self._keys:
            return
        if not msg_id or not timestamp or not signature:
            raise WebhookHeadersMissing(
                "webhook-id, webhook-timestamp and webhook-signature are required."
            )
        try:
            sent_at = int(timestamp)
        except ValueError:
            raise WebhookTimestampInvalid("webhook-timestamp is not Unix seconds.") from None
        current = time.time() if now is None else now
        if abs(current - sent_at) > self.tolerance_seconds:
            raise WebhookTimestampInvalid("webhook-timestamp is too old or in the future.")
        # The header may carry several signatures (the sender signs with each of its active
        # secrets during a rotation); one match against any of ours is enough.
        presented = [
            part.removeprefix("v1,")
            for part in signature.split()
            if part.startswith("v1,") and len(part) > 3
        ]
        matched = False
        for key in self._keys:
            expected = sign(key, msg_id, timestamp, body).removeprefix("v1,").encode()
            for candidate in presented:
                # Every comparison runs, so timing tells nothing about which one matched.
                matched |= hmac.compare_digest(candidate.encode(), expected)
        if not matched:
            raise WebhookSignatureInvalid("No webhook-signature matches the body.")


def verifier_for(app: FastAPI) -> WebhookVerifier:
    verifier: WebhookVerifier | None = getattr(app.state, "webhook_verifier", None)
    if verifier is None:
        verifier = WebhookVerifier.from_settings(app.state.settings)
        if not verifier.configured:
            logger.error(
                "no webhook verification configured (BAKKT_WEBHOOK_SECRETS, WEBHOOK_STATIC_TOKEN "
                "and WEBHOOK_ALLOWED_IPS are all empty): every webhook will be refused"
            )
        app.state.webhook_verifier = verifier
    return verifier


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise WebhookTooLarge(f"The webhook body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookTooLarge(f"The webhook body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def verified_webhook(request: Request) -> VerifiedWebhook:
    """The dependency: every configured check passes, or the request ends here with 401/413."""
    received_at = datetime.now(UTC)
    verifier = verifier_for(request.app)
    source_ip = request.client.host if request.client else None
    headers = request.headers
    try:
        if not verifier.configured:
            raise WebhookVerificationUnconfigured("The service has no webhook secret configured.")
        # Cheap checks first, so an unknown sender costs no body read and no HMAC.
        verifier.check_source(source_ip)
        verifier.check_token(headers.get(TOKEN_HEADER))
        body = await _read_capped(request, verifier.max_body_bytes)
        verifier.check_signature(
            msg_id=headers.get(WEBHOOK_ID_HEADER),
            timestamp=headers.get(WEBHOOK_TIMESTAMP_HEADER),
            signature=headers.get(WEBHOOK_SIGNATURE_HEADER),
            body=body,
        )
    except (WebhookRejected, WebhookTooLarge) as exc:
        metrics: Metrics = request.app.state.metrics
        metrics.webhooks_rejected.labels(exc.code).inc()
        metrics.webhooks_received.labels("rejected").inc()
        logger.warning(
            "webhook refused: %s (source %s, webhook-id %r)",
            exc.code,
            source_ip,
            (headers.get(WEBHOOK_ID_HEADER) or "")[:64],
        )
        raise
    return VerifiedWebhook(
        body=body,
        webhook_id=headers.get(WEBHOOK_ID_HEADER),
        headers={name: headers[name] for name in KEPT_HEADERS if name in headers},
        source_ip=source_ip,
        received_at=received_at,
    )
