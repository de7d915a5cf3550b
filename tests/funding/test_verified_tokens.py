"""TokenVerifier remembers a verified token (app/auth/tokens.py): the same token string is not
verified again until its `exp`, VERIFIED_MAX_AGE_SECONDS or a JWKS key change; anything else is
verified in full."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from app.auth import tokens
from app.auth.tokens import InvalidToken, Principal, TokenExpired, TokenVerifier
from app.config import Settings


class Clock:
    """The verifier's clock, moved by hand; jwt itself checks `exp` against the real one, so
    the tokens here are valid for real."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def _hs_token(settings: Settings, *, exp: float, party: str = "party-1", **extra: Any) -> str:
    assert settings.auth_jwt_secret is not None
    claims = {
        "iss": settings.auth_issuer,
        "aud": settings.auth_audience,
        "sub": party,
        settings.auth_party_claim: party,
        "exp": int(exp),
        "scope": "funding",
        **extra,
    }
    return jwt.encode(claims, settings.auth_jwt_secret.get_secret_value(), algorithm="HS256")


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    full = TokenVerifier._verify

    async def counted(self: TokenVerifier, token: str) -> tuple[Principal, float, int]:
        calls.append(token)
        return await full(self, token)

    monkeypatch.setattr(TokenVerifier, "_verify", counted)
    return calls


async def test_a_verified_token_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, clock = _settings(), Clock()
    verifier = TokenVerifier(settings, clock=clock)
    calls = _counting(monkeypatch)
    token = _hs_token(settings, exp=time.time() + 3600)
    first = await verifier.verify(token)
    assert await verifier.verify(token) == first == Principal("party-1", "party-1", admin=False)
    assert len(calls) == 1


async def test_it_is_verified_again_at_its_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, clock = _settings(), Clock()
    verifier = TokenVerifier(settings, clock=clock)
    calls = _counting(monkeypatch)
    exp = time.time() + 60
    token = _hs_token(settings, exp=exp)
    await verifier.verify(token)
    clock.now = exp  # its own `exp`: no longer taken from the cache
    await verifier.verify(token)
    assert len(calls) == 2


async def test_it_is_verified_again_after_the_max_age(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, clock = _settings(), Clock()
    verifier = TokenVerifier(settings, clock=clock)
    calls = _counting(monkeypatch)
    token = _hs_token(settings, exp=time.time() + 3600)
    await verifier.verify(token)
    clock.now += tokens.VERIFIED_MAX_AGE_SECONDS - 1
    await verifier.verify(token)
    clock.now += 2
    await verifier.verify(token)
    assert len(calls) == 2


async def test_an_expired_token_is_refused_even_after_it_was_accepted() -> None:
    settings = _settings()
    token = _hs_token(settings, exp=time.time() - 3600)
    verifier = TokenVerifier(settings, clock=Clock())
    with pytest.raises(TokenExpired):
        await verifier.verify(token)
    # Refused tokens are not kept: the next try is refused by the full check again.
    with pytest.raises(TokenExpired):
        await verifier.verify(token)
    assert verifier._verified == {}


async def test_a_token_changed_in_any_byte_is_verified_in_full() -> None:
    settings = _settings()
    verifier = TokenVerifier(settings)
    token = _hs_token(settings, exp=time.time() + 3600)
    await verifier.verify(token)
    header, payload, signature = token.split(".")
    tampered = ".".join(
        (header, payload, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB"))
    )
    with pytest.raises(InvalidToken):
        await verifier.verify(tampered)


async def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "VERIFIED_CACHE_SIZE", 3)
    settings = _settings()
    verifier = TokenVerifier(settings)
    minted = [_hs_token(settings, exp=time.time() + 3600, jti=str(i)) for i in range(5)]
    for token in minted:
        await verifier.verify(token)
    assert list(verifier._verified) == minted[2:]


async def test_a_jwks_key_change_verifies_again(monkeypatch: pytest.MonkeyPatch) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}

    async def fetch(url: str) -> Mapping[str, Any]:
        return {"keys": [jwk]}

    settings = _settings(auth_jwks_url="https://idp.example/jwks.json")
    verifier = TokenVerifier(settings, fetch_jwks=fetch)
    claims = {
        "iss": settings.auth_issuer,
        "aud": settings.auth_audience,
        "sub": "party-1",
        settings.auth_party_claim: "party-1",
        "exp": int(time.time()) + 3600,
    }
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    calls = _counting(monkeypatch)
    await verifier.verify(token)
    await verifier.verify(token)
    assert len(calls) == 1
    assert verifier.jwks is not None
    await verifier.jwks._refresh(keep_old=True)
    await verifier.verify(token)
    assert len(calls) == 2
