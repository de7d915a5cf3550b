"""Client-credentials tokens: RS256 JWTs (docs/bakkt-contract.md §3, A1)."""

import base64
import binascii
import functools
import hmac
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from bakkt_sandbox.config import SandboxSettings
from bakkt_sandbox.model import ApiError

ISSUER = "https://id.sandbox.bakkt.invalid/"
_VERIFIED_CACHE_LIMIT = 10_000


@functools.cache
def _signing_key() -> rsa.RSAPrivateKey:
    # One key per process: generating RSA keys is slow, and every sandbox a test suite starts
    # would otherwise pay for it.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def unauthorized(description: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", description, "unauthorized")


class TokenIssuer:
    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self._key = _signing_key()
        self._kid = uuid.uuid5(uuid.NAMESPACE_URL, ISSUER).hex[:16]
        # Tokens issued before a `/sandbox/tokens/expire` carry an older generation and fail.
        self.generation = 0
        # token -> exp: RSA verification once per token, not once per request.
        self._verified: dict[str, int] = {}

    def check_basic(self, header: str | None) -> None:
        if not header or not header.startswith("Basic "):
            raise unauthorized("Basic client credentials are required")
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise unauthorized("Malformed Basic credentials") from exc
        client_id, _, secret = decoded.partition(":")
        expected_secret = self.settings.client_secret.get_secret_value()
        ok_id = hmac.compare_digest(client_id.encode(), self.settings.client_id.encode())
        ok_secret = hmac.compare_digest(secret.encode(), expected_secret.encode())
        if not (ok_id and ok_secret):
            raise unauthorized("Invalid client credentials")

    def issue(self) -> dict[str, str]:
        now = int(time.time())
        ttl = self.settings.token_ttl
        claims = {
            "iss": ISSUER,
            "aud": self.settings.partner_id,
            "sub": self.settings.client_id,
            "iat": now,
            "exp": now + ttl,
            "jti": str(uuid.uuid4()),
            "roles": ["bakkt_merchant"],
            "bpId": 435671,
            "gen": self.generation,
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})
        # A1: expiresIn is a string of seconds equal to exp - iat.
        return {"accessToken": token, "expiresIn": str(ttl), "tokenType": "Bearer"}

    def check_bearer(self, header: str | None) -> None:
        if not header or not header.startswith("Bearer "):
            raise unauthorized("A bearer token is required")
        token = header[7:].strip()
        exp = self._verified.get(token)
        if exp is None:
            exp = self._verify(token)
        elif exp <= time.time():
            raise unauthorized("The access token has expired")

    def _verify(self, token: str) -> int:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                audience=self.settings.partner_id,
                issuer=ISSUER,
                options={"require": ["exp", "iat"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise unauthorized("The access token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise unauthorized("The access token is not valid") from exc
        if claims.get("gen") != self.generation:
            raise unauthorized("The access token has expired")
        if len(self._verified) >= _VERIFIED_CACHE_LIMIT:
            self._verified.clear()
        exp = int(claims["exp"])
        self._verified[token] = exp
        return exp

    def signing_key_pem(self) -> str:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def restore(self, signing_key_pem: str, generation: int) -> None:
        """Sign and check with a kept key, so tokens issued before a restart stay valid."""
        key = serialization.load_pem_private_key(signing_key_pem.encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the kept signing key is not an RSA key")
        self._key = key
        self.generation = generation
        self._verified.clear()

    def expire_all(self) -> None:
        self.generation += 1
        self._verified.clear()

    def jwks(self) -> dict[str, Any]:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update({"kid": self._kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}
