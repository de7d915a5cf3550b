"""Verifying consumer tokens: signature, `exp`, `iss`, `aud`, then who the caller is.

Keys come from the identity provider's JWKS (RS256/ES256) or, when no JWKS URL is configured,
from the shared HS256 development secret. Never both: accepting HS256 next to a JWKS would let a
public key be used as an HMAC secret (the classic algorithm-confusion attack).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from app.config import Settings
from app.errors import ServiceUnavailable, Unauthorized

log = logging.getLogger("app.auth")

JWKS_ALGORITHMS = frozenset({"RS256", "ES256"})
SECRET_ALGORITHMS = frozenset({"HS256"})
# Clock skew tolerated between the identity provider and this service.
LEEWAY_SECONDS = 10
# Tokens already verified, kept so that a client's next requests skip the signature check and
# the claims parsing (a consumer app sends the same token for its whole session).
VERIFIED_CACHE_SIZE = 4096
# A verified token is re-verified after this long even if it is valid for longer: an identity
# provider's key withdrawn from its JWKS stops being trusted here within the JWKS refresh.
VERIFIED_MAX_AGE_SECONDS = 300.0


class AuthenticationRequired(Unauthorized):
    code = "authentication_required"
    title = "A Bearer token is required"


class InvalidToken(Unauthorized):
    code = "invalid_token"
    title = "The Bearer token is not valid"


class TokenExpired(Unauthorized):
    code = "token_expired"
    title = "The Bearer token has expired"


class AuthKeysUnavailable(ServiceUnavailable):
    code = "auth_keys_unavailable"
    title = "The identity provider's signing keys cannot be fetched; retry shortly"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a consumer (one party) or the partner's back end (admin, any party)."""

    subject: str | None
    party_ref: str | None
    admin: bool

    def may_act_for(self, party_ref: str) -> bool:
        return self.admin or self.party_ref == party_ref


FetchJwks = Callable[[str], Awaitable[Mapping[str, Any]]]


async def _fetch_jwks(url: str) -> Mapping[str, Any]:
    # A client per fetch: fetches are rare (cold cache, rotation), so no pool is worth keeping.
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as http:
        response = await http.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        data = response.json()
    if not isinstance(data, Mapping):
        raise ValueError("JWKS is not a JSON object")
    return data


class JwksCache:
    """Signing keys by `kid`, refreshed after `ttl` or when a token names a kid we lack.

    Unknown kids trigger at most one fetch per `min_refresh_interval`, so a flood of tokens with
    invented kids cannot turn into a flood of requests to the identity provider.
    """

    def __init__(
        self,
        url: str,
        *,
        fetch: FetchJwks = _fetch_jwks,
        ttl: float = 3600.0,
        min_refresh_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._fetch = fetch
        self._ttl = ttl
        self._min_interval = min_refresh_interval
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        # Bumped whenever the key set changes: tokens verified with an older set are verified
        # again (TokenVerifier's cache).
        self.generation = 0
        self._fetched_at = -math.inf
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str | None) -> jwt.PyJWK:
        found = self._lookup(kid)
        if found is not None and not self._expired():
            return found
        async with self._lock:
            found = self._lookup(kid)
            age = self._clock() - self._fetched_at
            if (found is None and age >= self._min_interval) or self._expired():
                await self._refresh(keep_old=found is not None)
                found = self._lookup(kid)
        if found is None:
            raise InvalidToken("The token is signed with an unknown key.")
        return found

    def _expired(self) -> bool:
        return self._clock() - self._fetched_at >= self._ttl

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            # A provider with a single key may leave `kid` out of its tokens.
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _refresh(self, *, keep_old: bool) -> None:
        self.fetches += 1
        try:
            data = await self._fetch(self._url)
            keys = jwt.PyJWKSet.from_dict(dict(data)).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            log.warning("fetching the JWKS failed: %s", type(exc).__name__)
            # Rate-limit retries of a failing provider the same way as unknown kids.
            self._fetched_at = self._clock() - self._ttl + self._min_interval
            if keep_old or self._keys:
                return
            raise AuthKeysUnavailable(headers={"Retry-After": "5"}) from None
        self.generation += 1
        self._keys = {
            k.key_id: k
            for k in keys
            if k.public_key_use in (None, "sig") and k.algorithm_name in JWKS_ALGORITHMS
        }
        self._fetched_at = self._clock()


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    # Wall-clock time (as `exp` is) after which the token is verified again.
    until: float
    generation: int


class TokenVerifier:
    """Verifies a token once and remembers the answer for the same token string, until the
    earliest of its own `exp` (without the leeway: never longer than it is valid),
    VERIFIED_MAX_AGE_SECONDS, or a change of the JWKS key set.

    Safe because the key is the whole token, signature included: only the very bytes that
    passed verification are recognised, so a token changed in any way (claims, header,
    signature) misses and is verified in full. Refused tokens are never kept, so invalid ones
    cannot fill the cache; a valid one answers with the principal it was verified to, which
    depends only on the token and the settings (fixed for the process)."""

    def __init__(
        self,
        settings: Settings,
        *,
        fetch_jwks: FetchJwks = _fetch_jwks,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuer = settings.auth_issuer
        self._audience = settings.auth_audience
        self._party_claim = settings.auth_party_claim
        self._admin_scope = settings.auth_admin_scope
        self._jwks = (
            JwksCache(settings.auth_jwks_url, fetch=fetch_jwks) if settings.auth_jwks_url else None
        )
        self._secret = settings.auth_jwt_secret
        if self._jwks is None and self._secret is None:
            raise ValueError("set AUTH_JWKS_URL or AUTH_JWT_SECRET")
        self._clock = clock
        self._verified: dict[str, _Verified] = {}

    @property
    def jwks(self) -> JwksCache | None:
        return self._jwks

    async def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        now = self._clock()
        if known is not None:
            current = self._jwks.generation if self._jwks is not None else 0
            if now < known.until and known.generation == current:
                return known.principal
            del self._verified[token]
        principal, exp, generation = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            # The oldest entry goes (dicts keep insertion order).
            del self._verified[next(iter(self._verified))]
        until = min(exp, now + VERIFIED_MAX_AGE_SECONDS)
        if until > now:
            self._verified[token] = _Verified(principal, until, generation)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float, int]:
        """The full check: the principal, the token's `exp`, and the generation of the key
        set its key came from."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("The token is not a JWT.") from None
        alg = header.get("alg")
        key: Any
        generation = 0
        if self._jwks is not None:
            if alg not in JWKS_ALGORITHMS:
                raise InvalidToken("The token's algorithm is not accepted.")
            kid = header.get("kid")
            jwk = await self._jwks.key(kid if isinstance(kid, str) else None)
            # Read with the key, before anything else can await (and refresh the set).
            generation = self._jwks.generation
            if jwk.algorithm_name != alg:
                raise InvalidToken("The token's algorithm does not match its key.")
            key = jwk.key
        else:
            if alg not in SECRET_ALGORITHMS:
                raise InvalidToken("The token's algorithm is not accepted.")
            assert self._secret is not None  # noqa: S101 - checked in __init__
            key = self._secret.get_secret_value()
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("The token has expired; get a new one.") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(_reason(exc)) from None
        principal = self._principal(claims)
        # `require` makes jwt check that `exp` is there and a number.
        return principal, float(claims["exp"]), generation

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        admin = self._admin_scope in _scopes(claims)
        party = claims.get(self._party_claim)
        if not isinstance(party, str) or not party:
            party = None
        if party is None and not admin:
            raise InvalidToken("The token names no party.")
        subject = claims.get("sub")
        return Principal(
            subject=subject if isinstance(subject, str) else None, party_ref=party, admin=admin
        )


def _scopes(claims: Mapping[str, Any]) -> set[str]:
    scopes: set[str] = set()
    # OAuth 2 `scope` is one space-separated string; Azure AD and others send `scp`, as a
    # list or a string.
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(v for v in value if isinstance(v, str))
    return scopes


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.InvalidAudienceError):
        return "The token is not meant for this service (aud)."
    if isinstance(exc, jwt.InvalidIssuerError):
        return "The token's issuer is not trusted (iss)."
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"The token lacks the {exc.claim!r} claim."
    if isinstance(exc, jwt.InvalidSignatureError):
        return "The token's signature does not verify."
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "The token is not valid yet."
    return "The token could not be verified."
