"""Standard Webhooks signatures (https://www.standardwebhooks.com, "Signature scheme").

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, HMAC-SHA256 under the key that
follows `whsec_` (base64); `webhook-signature` holds one `v1,<base64>` per secret, separated by
spaces, so a receiver that knows either the old or the new secret accepts during a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from app.config import webhook_secret_key

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


def signature_header(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        for key in keys
    )


def signed_headers(
    keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature_header(keys, msg_id, timestamp, body),
    }


def fingerprint(secret: str) -> str:
    """What may be shown of a secret: the first 12 hex digits of the SHA-256 of its key. Enough
    to tell two secrets apart in a listing; says nothing about the key."""
    return hashlib.sha256(webhook_secret_key(secret)).hexdigest()[:12]
