"""Who may call: every route with no token, a bad one, an expired one, another party's, an
admin's and the party's own; JWKS keys (RS256, ES256), their cache and rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.auth.dependencies import get_verifier
from app.auth.dev_token import mint_dev_token
from app.bakkt import BakktClient
from app.config import Settings
from app.db import create_session_factory
from app.main import create_app
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import with_key

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: dict[str, Any] | None
    idempotent: bool
    # What an authorized caller gets for a fresh party with nothing linked.
    status: int
    code: str | None = None


ROUTES = [
    Route("POST", "/link-sessions", {}, True, 201),
    Route("POST", "/bank-accounts", {"processorToken": "processor-auth-test"}, True, 202),
    Route("GET", "/bank-accounts", None, False, 200),
    Route("DELETE", f"/bank-accounts/{UNKNOWN_ID}", None, True, 404, "bank_account_not_found"),
    Route("POST", "/deposits", {"amount": "10.00"}, True, 409, "no_linked_bank_account"),
    Route(
        "POST",
        "/withdrawals",
        {"method": "ACH", "amount": "10.00"},
        True,
        409,
        "no_linked_bank_account",
    ),
    Route("GET", "/transactions", None, False, 200),
    Route("GET", f"/transactions/{UNKNOWN_ID}", None, False, 404, "transaction_not_found"),
    Route("GET", "/balance", None, False, 200),
    Route("GET", "/wire-instructions", None, False, 200),
]
ROUTE_IDS = [f"{r.method} {r.path.split('/')[1]}" for r in ROUTES]


async def call(
    http: httpx.AsyncClient, route: Route, party_ref: str, headers: dict[str, str]
) -> httpx.Response:
    if route.idempotent:
        headers = with_key(headers)
    return await http.request(
        route.method, f"/v1/parties/{party_ref}{route.path}", json=route.body, headers=headers
    )


async def nothing_written(connection: AsyncConnection, party_ref: str) -> bool:
    counts = await connection.execute(
        text(
            "SELECT (SELECT count(*) FROM parties WHERE party_ref = :p)"
            " + (SELECT count(*) FROM idempotency_keys WHERE party_ref = :p)"
            " + (SELECT count(*) FROM bank_accounts WHERE party_ref = :p)"
            " + (SELECT count(*) FROM transactions WHERE party_ref = :p)"
        ),
        {"p": party_ref},
    )
    return counts.scalar_one() == 0


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_without_a_token_every_route_answers_401(
    api: httpx.AsyncClient, connection: AsyncConnection, party: str, route: Route
) -> None:
    response = await call(api, route, party, {})
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_required"
    assert response.headers["www-authenticate"] == "Bearer"
    assert await nothing_written(connection, party)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_a_token_signed_with_another_secret_answers_401_invalid_token(
    api: httpx.AsyncClient,
    api_settings: Settings,
    connection: AsyncConnection,
    party: str,
    route: Route,
) -> None:
    forged = jwt.encode(
        {
            "iss": api_settings.auth_issuer,
            "aud": api_settings.auth_audience,
            "sub": party,
            "exp": int(time.time()) + 600,
        },
        "not-the-service-secret-at-all-0123456789",
        algorithm="HS256",
    )
    response = await call(api, route, party, {"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"
    assert "invalid_token" in response.headers["www-authenticate"]
    assert await nothing_written(connection, party)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_an_expired_token_answers_401_token_expired(
    api: httpx.AsyncClient,
    auth: TokenFactory,
    connection: AsyncConnection,
    party: str,
    route: Route,
) -> None:
    response = await call(api, route, party, auth(party, ttl=-60))
    assert response.status_code == 401
    assert response.json()["code"] == "token_expired"
    assert await nothing_written(connection, party)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_another_partys_token_gets_404_as_if_the_party_did_not_exist(
    api: httpx.AsyncClient,
    auth: TokenFactory,
    connection: AsyncConnection,
    party: str,
    route: Route,
) -> None:
    response = await call(api, route, party, auth("someone-else"))
    unknown_route = await api.get("/v1/no-such-route", headers=auth("someone-else"))
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == "not_found" == unknown_route.json()["code"]
    assert party not in body["detail"]
    assert await nothing_written(connection, party)
    assert await nothing_written(connection, "someone-else")


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_an_admin_token_may_act_for_any_party(
    api: httpx.AsyncClient, auth: TokenFactory, party: str, route: Route
) -> None:
    response = await call(api, route, party, auth("partner-back-end", admin=True))
    assert response.status_code == route.status, response.text
    if route.code:
        assert response.json()["code"] == route.code


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_the_partys_own_token_reaches_the_route(
    api: httpx.AsyncClient, auth: TokenFactory, party: str, route: Route
) -> None:
    response = await call(api, route, party, auth(party))
    assert response.status_code == route.status, response.text
    if route.code:
        assert response.json()["code"] == route.code


def _claims(settings: Settings, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": settings.auth_issuer,
        "aud": settings.auth_audience,
        "sub": "alice",
        "exp": int(time.time()) + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _hs256(settings: Settings, claims: dict[str, Any]) -> str:
    assert settings.auth_jwt_secret is not None
    return jwt.encode(claims, settings.auth_jwt_secret.get_secret_value(), algorithm="HS256")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "some-other-service"}, "aud"),
        ({"iss": "https://evil.example/"}, "iss"),
        ({"exp": None}, "exp"),
        ({"aud": None}, "aud"),
        ({"sub": None}, "no party"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
    ],
    ids=["wrong-aud", "wrong-iss", "no-exp", "no-aud", "no-party", "not-yet-valid"],
)
async def test_tokens_with_wrong_or_missing_claims_are_refused(
    api: httpx.AsyncClient, api_settings: Settings, overrides: dict[str, Any], reason: str
) -> None:
    token = _hs256(api_settings, _claims(api_settings, **overrides))
    response = await api.get(
        "/v1/parties/alice/bank-accounts", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"
    assert reason in response.json()["detail"]


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        jwt.encode({"sub": "alice"}, key=None, algorithm="none"),
        "a.b.c",
    ],
    ids=["garbage", "alg-none", "three-dots"],
)
async def test_malformed_and_unsigned_tokens_are_refused(
    api: httpx.AsyncClient, token: str
) -> None:
    response = await api.get(
        "/v1/parties/alice/bank-accounts", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_a_basic_authorization_header_is_not_a_token(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/v1/parties/alice/bank-accounts", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_required"


async def test_admin_scope_is_read_from_a_scp_list_too(
    api: httpx.AsyncClient, api_settings: Settings
) -> None:
    token = _hs256(
        api_settings,
        _claims(api_settings, sub="back-end", scp=["read", api_settings.auth_admin_scope]),
    )
    response = await api.get(
        "/v1/parties/bob/bank-accounts", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200


async def test_a_scope_that_merely_contains_the_admin_scope_is_not_admin(
    api: httpx.AsyncClient, api_settings: Settings
) -> None:
    token = _hs256(
        api_settings, _claims(api_settings, sub="alice", scope="funding:admin-lite funding")
    )
    response = await api.get(
        "/v1/parties/bob/bank-accounts", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 404


@pytest.fixture
async def make_api(
    engine: AsyncEngine, connection: AsyncConnection, bakkt: BakktClient
) -> AsyncIterator[Any]:
    """Builds the app with other auth settings, sharing the test's rolled-back connection."""
    clients: list[httpx.AsyncClient] = []
    contexts: list[Any] = []

    async def build(settings: Settings) -> tuple[httpx.AsyncClient, FastAPI]:
        app = create_app(settings, engine=engine, bakkt=bakkt)
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        contexts.append(ctx)
        factory = create_session_factory(connection)  # type: ignore[arg-type]
        factory.configure(join_transaction_mode="create_savepoint")
        app.state.session_factory = factory
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        clients.append(http)
        return http, app

    yield build
    for http in clients:
        await http.aclose()
    for ctx in contexts:
        await ctx.__aexit__(None, None, None)


async def test_the_party_claim_is_configurable(make_api: Any, api_settings: Settings) -> None:
    settings = api_settings.model_copy(update={"auth_party_claim": "partner_party_ref"})
    http, _ = await make_api(settings)
    token = _hs256(settings, _claims(settings, sub="idp-user-1", partner_party_ref="carol"))
    headers = {"Authorization": f"Bearer {token}"}
    assert (await http.get("/v1/parties/carol/bank-accounts", headers=headers)).status_code == 200
    own_sub = await http.get("/v1/parties/idp-user-1/bank-accounts", headers=headers)
    assert own_sub.status_code == 404


async def test_mint_dev_token_makes_tokens_the_service_accepts(
    api: httpx.AsyncClient, api_settings: Settings
) -> None:
    token = mint_dev_token(api_settings, "dave")
    claims = jwt.decode(
        token,
        api_settings.auth_jwt_secret.get_secret_value(),  # type: ignore[union-attr]
        algorithms=["HS256"],
        audience=api_settings.auth_audience,
    )
    assert claims["sub"] == "dave"
    assert api_settings.auth_admin_scope not in claims["scope"].split()
    admin = mint_dev_token(api_settings, "dave", admin=True)
    for party_ref, headers, status in [
        ("dave", {"Authorization": f"Bearer {token}"}, 200),
        ("erin", {"Authorization": f"Bearer {token}"}, 404),
        ("erin", {"Authorization": f"Bearer {admin}"}, 200),
    ]:
        response = await api.get(f"/v1/parties/{party_ref}/bank-accounts", headers=headers)
        assert response.status_code == status


# --- JWKS ---------------------------------------------------------------------------------------


@dataclass
class IdentityProvider:
    """A JWKS endpoint on an ephemeral port, and the private keys behind it."""

    url: str = ""
    keys: dict[str, tuple[str, Any]] = field(default_factory=dict)  # kid -> (alg, private key)
    published: list[str] = field(default_factory=list)
    hits: int = 0
    failing: bool = False

    def add_key(self, alg: str, *, publish: bool = True) -> str:
        kid = f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        key = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if alg == "RS256"
            else ec.generate_private_key(ec.SECP256R1())
        )
        self.keys[kid] = (alg, key)
        if publish:
            self.published.append(kid)
        return kid

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid in self.published:
            alg, key = self.keys[kid]
            codec = RSAAlgorithm if alg == "RS256" else ECAlgorithm
            jwk = codec.to_jwk(key.public_key(), as_dict=True)
            out.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        return {"keys": out}

    def token(self, kid: str, settings: Settings, **claims: Any) -> str:
        alg, key = self.keys[kid]
        return jwt.encode(_claims(settings, **claims), key, algorithm=alg, headers={"kid": kid})

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.failing:
            return web.Response(status=503)
        return web.json_response(self.jwks())


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", provider.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    provider.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    try:
        yield provider
    finally:
        await runner.cleanup()


@pytest.fixture
async def jwks_api(make_api: Any, api_settings: Settings, idp: IdentityProvider) -> Any:
    settings = api_settings.model_copy(
        update={"auth_jwks_url": idp.url, "auth_jwt_secret": None, "auth_issuer": "https://idp/"}
    )
    http, app = await make_api(settings)
    return settings, http, app


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_jwks_signed_tokens_are_accepted_and_the_keys_fetched_once(
    jwks_api: Any, idp: IdentityProvider, alg: str
) -> None:
    settings, http, _ = jwks_api
    kid = idp.add_key(alg)
    headers = {"Authorization": f"Bearer {idp.token(kid, settings)}"}
    for _ in range(5):
        response = await http.get("/v1/parties/alice/bank-accounts", headers=headers)
        assert response.status_code == 200
    assert idp.hits == 1


async def test_a_rotated_key_is_fetched_when_a_token_names_its_kid(
    jwks_api: Any, idp: IdentityProvider
) -> None:
    settings, http, app = jwks_api
    old = idp.add_key("RS256")
    ok = await http.get(
        "/v1/parties/alice/bank-accounts",
        headers={"Authorization": f"Bearer {idp.token(old, settings)}"},
    )
    assert ok.status_code == 200
    new = idp.add_key("ES256")
    # Unknown kids are fetched at most once per 30 s (a flood guard): let that time pass.
    jwks = get_verifier(app).jwks
    assert jwks is not None
    jwks._fetched_at -= 31
    rotated = await http.get(
        "/v1/parties/alice/bank-accounts",
        headers={"Authorization": f"Bearer {idp.token(new, settings)}"},
    )
    assert rotated.status_code == 200
    assert idp.hits == 2


async def test_tokens_with_unknown_kids_cause_at_most_one_fetch_per_interval(
    jwks_api: Any, idp: IdentityProvider
) -> None:
    settings, http, _ = jwks_api
    published = idp.add_key("RS256")
    unpublished = idp.add_key("RS256", publish=False)
    good = idp.token(published, settings)
    await http.get("/v1/parties/alice/bank-accounts", headers={"Authorization": f"Bearer {good}"})
    bad = idp.token(unpublished, settings)
    for _ in range(10):
        response = await http.get(
            "/v1/parties/alice/bank-accounts", headers={"Authorization": f"Bearer {bad}"}
        )
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"
    assert idp.hits == 1


def _forge_hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """By hand: PyJWT itself refuses a PEM public key as an HMAC secret."""

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret, header + b"." + payload, hashlib.sha256).digest())
    return (header + b"." + payload + b"." + signature).decode()


async def test_with_a_jwks_an_hs256_token_is_refused_even_signed_with_the_public_key(
    jwks_api: Any, idp: IdentityProvider
) -> None:
    settings, http, _ = jwks_api
    kid = idp.add_key("RS256")
    public_pem = (
        idp.keys[kid][1].public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    # The algorithm-confusion attack: the public key (public knowledge) as an HMAC secret.
    forged = _forge_hs256(_claims(settings), public_pem, kid)
    response = await http.get(
        "/v1/parties/alice/bank-accounts", headers={"Authorization": f"Bearer {forged}"}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_an_unreachable_jwks_answers_503_not_401(
    jwks_api: Any, idp: IdentityProvider
) -> None:
    settings, http, _ = jwks_api
    kid = idp.add_key("RS256")
    idp.failing = True
    response = await http.get(
        "/v1/parties/alice/bank-accounts",
        headers={"Authorization": f"Bearer {idp.token(kid, settings)}"},
    )
    assert response.status_code == 503
    assert response.json()["code"] == "auth_keys_unavailable"
    assert response.headers["retry-after"]
