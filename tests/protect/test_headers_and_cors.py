"""Security headers on every answer, the documentation pages' own content security policy, and
CORS only for the origins CORS_ALLOWED_ORIGINS lists."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from pydantic import ValidationError

from app.config import AppEnv, Settings
from app.core.http_security import API_CSP
from tests.protect.conftest import ServiceFactory

ORIGIN = "https://app.partner.example"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
}
COMMON = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


async def test_every_kind_of_answer_carries_the_security_headers(
    service: ServiceFactory, party: str
) -> None:
    async with service(rate_limit_reads="1/minute") as svc:
        auth = svc.headers(party)
        answers = {
            "200": await svc.http.get("/healthz"),
            "401": await svc.http.get(f"/v1/parties/{party}/transactions"),
            "404": await svc.http.get("/nowhere"),
            "413": await svc.http.post(
                f"/v1/parties/{party}/deposits", content=b"x" * 70_000, headers=auth
            ),
            "422": await svc.http.get(f"/v1/parties/{party}/transactions?limit=0", headers=auth),
            "429": await svc.http.get(f"/v1/parties/{party}/transactions", headers=auth),
        }

    for status, response in answers.items():
        assert str(response.status_code) == status, response.text
        for name, value in COMMON.items():
            assert response.headers[name] == value, (status, name)
        assert response.headers["content-security-policy"] == API_CSP, status
        assert response.headers["cache-control"] == "no-store", status
        # Development: no HSTS, which would pin localhost to https in the developer's browser.
        assert "strict-transport-security" not in response.headers


async def test_production_adds_hsts(service: ServiceFactory) -> None:
    async with service(app_env=AppEnv.PRODUCTION, public_ops_routes=True) as svc:
        response = await svc.http.get("/healthz")

    assert response.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"


async def test_a_response_keeps_the_cache_control_it_set(service: ServiceFactory) -> None:
    async with service() as svc:
        asset = await svc.http.get("/docs-assets/swagger-ui/swagger-ui.css")

    assert asset.status_code == 200
    assert "cache-control" not in asset.headers
    assert asset.headers["etag"]


def _inline_script_hashes(html: str) -> set[str]:
    return {
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    }


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_documentation_pages_allow_only_their_own_scripts(
    service: ServiceFactory, page: str
) -> None:
    async with service() as svc:
        response = await svc.http.get(page)

    assert response.status_code == 200
    policy = dict(
        [*part.split(" ", 1), ""][:2]
        for part in (p.strip() for p in response.headers["content-security-policy"].split(";"))
    )
    scripts = set(policy["script-src"].split())
    assert scripts == {"'self'"} | _inline_script_hashes(response.text)
    assert "'unsafe-inline'" not in scripts
    assert "'unsafe-eval'" not in scripts
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert response.headers["x-frame-options"] == "DENY"


async def test_swagger_ui_sends_the_document_to_no_validator(service: ServiceFactory) -> None:
    async with service() as svc:
        page = (await svc.http.get("/docs")).text

    assert '"validatorUrl": null' in page


# --- CORS -----------------------------------------------------------------------------------------


async def test_without_allowed_origins_no_cors_header_is_sent(
    service: ServiceFactory, party: str
) -> None:
    async with service() as svc:
        preflight = await svc.http.options(f"/v1/parties/{party}/deposits", headers=PREFLIGHT)
        read = await svc.http.get(
            f"/v1/parties/{party}/transactions", headers={**svc.headers(party), "Origin": ORIGIN}
        )

    assert preflight.status_code == 405
    assert read.status_code == 200
    for response in (preflight, read):
        assert not [h for h in response.headers if h.startswith("access-control-")]


async def test_an_allowed_origin_may_send_the_apis_headers_and_read_its_answers(
    service: ServiceFactory, party: str
) -> None:
    async with service(cors_allowed_origins=ORIGIN) as svc:
        preflight = await svc.http.options(f"/v1/parties/{party}/deposits", headers=PREFLIGHT)
        read = await svc.http.get(
            f"/v1/parties/{party}/transactions", headers={**svc.headers(party), "Origin": ORIGIN}
        )

    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    allowed = {
        h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "idempotency-key", "last-event-id"} <= allowed
    assert "access-control-allow-credentials" not in preflight.headers
    assert read.status_code == 200
    assert read.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip() for h in read.headers["access-control-expose-headers"].split(",")}
    assert {"X-Request-ID", "Retry-After", "Idempotent-Replayed"} <= exposed
    assert "Origin" in read.headers["vary"]


async def test_a_browser_app_can_read_a_429_and_its_retry_after(
    service: ServiceFactory, party: str
) -> None:
    headers = {"Origin": ORIGIN}
    async with service(cors_allowed_origins=ORIGIN, rate_limit_reads="1/minute") as svc:
        path = f"/v1/parties/{party}/transactions"
        await svc.http.get(path, headers={**svc.headers(party), **headers})
        refused = await svc.http.get(path, headers={**svc.headers(party), **headers})

    assert refused.status_code == 429
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert "Retry-After" in refused.headers["access-control-expose-headers"]


async def test_another_origin_gets_a_problem_and_no_allow_origin(
    service: ServiceFactory, party: str
) -> None:
    foreign = {**PREFLIGHT, "Origin": "https://evil.example"}
    async with service(cors_allowed_origins=ORIGIN) as svc:
        preflight = await svc.http.options(f"/v1/parties/{party}/deposits", headers=foreign)
        read = await svc.http.get(
            f"/v1/parties/{party}/transactions",
            headers={**svc.headers(party), "Origin": "https://evil.example"},
        )

    assert preflight.status_code == 400
    assert preflight.headers["content-type"] == "application/problem+json"
    assert preflight.json()["code"] == "cors_not_allowed"
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in read.headers


async def test_credentials_are_allowed_only_when_configured(
    service: ServiceFactory, party: str
) -> None:
    async with service(cors_allowed_origins=ORIGIN, cors_allow_credentials=True) as svc:
        preflight = await svc.http.options(f"/v1/parties/{party}/deposits", headers=PREFLIGHT)

    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert preflight.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize(
    ("origins", "message"),
    [
        ("https://app.example.com/", "is not an origin"),
        ("app.example.com", "is not an origin"),
        ("https://App.example.com", "is not an origin"),
        ("https://app.example.com/path", "is not an origin"),
        ("*,https://app.example.com", "`*` alone"),
    ],
)
def test_what_is_not_an_origin_is_refused(origins: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, cors_allowed_origins=origins)  # type: ignore[call-arg]


def test_any_origin_with_credentials_is_refused() -> None:
    with pytest.raises(ValidationError, match="`\\*` with CORS_ALLOW_CREDENTIALS"):
        Settings(_env_file=None, cors_allowed_origins="*", cors_allow_credentials=True)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("origins", "message"),
    [
        ("*", "must list origins, not `\\*`"),
        ("https://a.example.com,http://b.example.com", "must be https:// origins"),
    ],
)
def test_production_refuses_any_origin_and_plain_http(origins: str, message: str) -> None:
    strong = {
        "app_env": "production",
        "database_url": "postgresql://u:p@db.internal:5432/fiat",
        "bakkt_client_secret": "Zq8vR2mK9tL4xW7nB3cF",
        "bakkt_webhook_secrets": "whsec_" + base64.b64encode(bytes(range(32))).decode(),
        "auth_jwt_secret": "k" * 12 + "Qw9Lm3Zx7Rt2Vb8Np4Hs6Jd1",
    }
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, cors_allowed_origins=origins, **strong)  # type: ignore[arg-type]
