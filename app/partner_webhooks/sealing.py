"""Admin endpoints' signing secrets at rest: sealed with AES-256-GCM under
PARTNER_WEBHOOK_SEALING_KEYS, so that a copy of the database (a backup, a read replica, an
analyst's read access) does not let its holder sign as this service to a partner's endpoint.

The service must read the secrets back to sign, so they are encrypted, not hashed. The key lives
outside the database (a setting, from the secret store in production). A stored value is
`sealed:v1:<kid>:<base64url(nonce || ciphertext+tag)>`; `kid` is the first 8 hex digits of the
key's SHA-256, so a rotation (new key first, old ones after) reads every row while
`fiat-onramp seal-webhook-secrets` re-seals them under the new one. The endpoint's id is the
associated data: a sealed value copied to another endpoint's row does not open there. A plain
`whsec_` value (written before sealing existed) is still read as it is until re-sealed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from app.config import Settings

PREFIX = "sealed:v1:"
KEY_BYTES = 32
_NONCE_BYTES = 12

# Development and tests only (APP_ENV=production refuses it, app/config.py): the same code path
# everywhere, with a key that is no secret.
DEV_SEALING_KEY = base64.b64encode(
    hashlib.sha256(b"fiat-onramp development sealing key").digest()
).decode()


class SealingError(Exception):
    """A stored secret that cannot be opened: its key is not configured, or it was tampered
    with. The message names the key id and never the value."""


@dataclass(frozen=True, slots=True)
class SealingKey:
    kid: str
    key: bytes = b""

    def __repr__(self) -> str:  # never the key, in a traceback or a log
        return f"SealingKey(kid={self.kid!r})"


def sealing_key(text: str) -> SealingKey:
    """A key from its setting's text (standard base64 of 32 bytes); ValueError if not."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"is {len(key)} bytes, not {KEY_BYTES} (AES-256)")
    return SealingKey(hashlib.sha256(key).hexdigest()[:8], key)


def keys_of(settings: Settings) -> list[SealingKey]:
    """The configured keys, first the sealing one; the development key when none is set outside
    production; none in production without the setting (nothing can be sealed then)."""
    from app.config import AppEnv

    texts = [k.get_secret_value() for k in settings.partner_webhook_sealing_keys]
    if not texts and settings.app_env is not AppEnv.PRODUCTION:
        texts = [DEV_SEALING_KEY]
    return [sealing_key(t) for t in texts]


def seal(secret: str, endpoint_id: uuid.UUID, keys: Sequence[SealingKey]) -> str:
    """`secret` sealed under the first key."""
    if not keys:
        raise SealingError("no sealing key is configured (PARTNER_WEBHOOK_SEALING_KEYS)")
    first = keys[0]
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(first.key).encrypt(nonce, secret.encode(), endpoint_id.bytes)
    return f"{PREFIX}{first.kid}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def unseal(stored: str, endpoint_id: uuid.UUID, keys: Sequence[SealingKey]) -> str:
    """The secret a stored value holds; SealingError when it cannot be opened."""
    if not stored.startswith(PREFIX):
        return stored
    kid, _, blob = stored.removeprefix(PREFIX).partition(":")
    key = next((k for k in keys if k.kid == kid), None)
    if key is None:
        raise SealingError(f"sealed under key {kid}, which PARTNER_WEBHOOK_SEALING_KEYS lacks")
    try:
        raw = base64.urlsafe_b64decode(blob)
        opened = AESGCM(key.key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], endpoint_id.bytes)
    except (binascii.Error, ValueError, InvalidTag):
        raise SealingError(f"sealed under key {kid} but does not open (altered or moved)") from None
    return opened.decode()


def sealed_under(stored: str) -> str | None:
    """The key id a stored value is sealed under (None: not sealed)."""
    if not stored.startswith(PREFIX):
        return None
    return stored.removeprefix(PREFIX).partition(":")[0]
