"""Development tokens signed with the shared HS256 secret (`fiat-onramp token`)."""

from __future__ import annotations

import time
import uuid

import jwt

from app.config import Settings


def mint_dev_token(
    settings: Settings, party: str, *, admin: bool = False, ttl_seconds: int = 3600
) -> str:
    """A token the service accepts when it runs with `AUTH_JWT_SECRET` (no JWKS URL).

    `ttl_seconds` may be negative, which gives an already expired token (useful in tests).
    """
    if settings.auth_jwt_secret is None:
        raise RuntimeError("AUTH_JWT_SECRET is not set: development tokens need it")
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": settings.auth_issuer,
        "aud": settings.auth_audience,
        "sub": party,
        settings.auth_party_claim: party,
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": str(uuid.uuid4()),
        "scope": f"funding {settings.auth_admin_scope}" if admin else "funding",
    }
    return jwt.encode(claims, settings.auth_jwt_secret.get_secret_value(), algorithm="HS256")
