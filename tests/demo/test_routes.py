"""The demo's routes: served in development only, a consumer token for the party asked for, and
the sandbox's control API forwarded as it answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from app.auth.tokens import TokenVerifier
from app.config import Settings
from app.main import create_app
from bakkt_sandbox.testing import RunningSandbox
from tests.fault.harness import free_port
from tests.foundation.test_settings import REAL_SECRETS

# No database: none of these routes reads or writes one.
NO_DATABASE = "postgresql://nobody@127.0.0.1:9/none"


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"database_url": NO_DATABASE, "workers_enabled": False}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


async def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture
async def http(bakkt_sandbox: RunningSandbox) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(_settings(bakkt_base_url=bakkt_sandbox.base_url))
    async with app.router.lifespan_context(app), await _client(app) as client:
        yield client


async def test_page_is_served_in_development_with_its_own_assets_only(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/demo")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    referenced = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assets = {url for url in referenced if not url.startswith("data:")}
    assert assets == {"/demo/assets/style.css", "/demo/assets/app.js"}
    for url, kind in (
        ("/demo/assets/style.css", "text/css"),
        ("/demo/assets/app.js", "javascript"),
    ):
        asset = await http.get(url)
        assert asset.status_code == 200, url
        assert kind in asset.headers["content-type"]
    script = (await http.get("/demo/assets/app.js")).text
    # Everything the page builds from API data goes through text nodes, never markup.
    assert "innerHTML" not in script
    assert "http://" not in script
    assert "https://" not in script


async def test_dev_token_is_a_consumer_token_for_the_party_asked_for(
    http: httpx.AsyncClient,
) -> None:
    answer = await http.post("/demo/token", json={"partyRef": "demo-alice"})
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["partyRef"] == "demo-alice"
    assert body["tokenType"] == "Bearer"
    assert body["expiresIn"] == 3600
    principal = await TokenVerifier(_settings()).verify(body["token"])
    assert principal.party_ref == "demo-alice"
    assert principal.admin is False


@pytest.mark.parametrize(
    "body",
    [{}, {"partyRef": ""}, {"partyRef": "a b"}, {"partyRef": ".."}, {"partyRef": "x", "admin": 1}],
)
async def test_dev_token_refuses_a_party_ref_the_api_would_refuse(
    http: httpx.AsyncClient, body: dict[str, object]
) -> None:
    answer = await http.post("/demo/token", json=body)
    assert answer.status_code == 422
    assert answer.json()["code"] == "validation_failed"
    assert "token" not in answer.json()


async def test_dev_token_needs_the_shared_secret() -> None:
    settings = _settings(
        auth_jwks_url="https://idp.example/.well-known/jwks.json", auth_jwt_secret=""
    )
    app = create_app(settings)
    async with await _client(app) as client:
        answer = await client.post("/demo/token", json={"partyRef": "alice"})
    assert answer.status_code == 409
    assert answer.json()["code"] == "dev_tokens_unavailable"


async def test_config_names_the_settings_the_page_describes(http: httpx.AsyncClient) -> None:
    answer = await http.get("/demo/config")
    assert answer.status_code == 200
    assert answer.json() == {"transferMaxAttempts": 4, "bakktReadTimeout": 10.0}


async def test_sandbox_control_api_is_forwarded_as_it_answers(
    http: httpx.AsyncClient, bakkt_sandbox: RunningSandbox
) -> None:
    clock = await http.get("/demo/sandbox/clock")
    assert clock.status_code == 200
    assert clock.json()["frozen"] is True

    party = "demo-forwarded-status"
    moved = await http.post(f"/demo/sandbox/parties/{party}/status", json={"status": "SUSPENDED"})
    assert moved.status_code == 200
    assert (await bakkt_sandbox.party(party))["partyStatus"] == "SUSPENDED"

    added = await http.post(
        "/demo/sandbox/faults",
        json={"operation": "heartbeat", "mode": "error", "status": 502, "count": 1},
    )
    assert added.status_code == 201
    fault_id = added.json()[0]["id"]
    try:
        listed = (await http.get("/demo/sandbox/faults")).json()
        assert any(f["id"] == fault_id and f["status"] == 502 for f in listed)
    finally:
        removed = await http.delete(f"/demo/sandbox/faults/{fault_id}")
    assert removed.status_code in (200, 204)
    assert all(f["id"] != fault_id for f in await bakkt_sandbox.faults())

    # The sandbox's own error envelope reaches the page unchanged.
    refused = await http.post("/demo/sandbox/clock/advance", json={"days": -1})
    assert refused.status_code == 400
    assert refused.json()["type"] == "INVALID_REQUEST"


@pytest.mark.parametrize(
    "path",
    [
        "/demo/sandbox/",
        "/demo/sandbox/%2e%2e/partner/v1/heartbeat",
        "/demo/sandbox/clock/%2E%2E/%2e%2e/partner",
        "/demo/sandbox/clock/%2E",
    ],
)
async def test_sandbox_forwarding_stays_inside_the_control_api(
    http: httpx.AsyncClient, path: str
) -> None:
    # Encoded dots: httpx itself resolves plain `.` and `..` before sending.
    answer = await http.get(httpx.URL("http://t").copy_with(raw_path=path.encode()))
    assert answer.status_code == 404
    assert answer.json()["code"] == "not_found"


async def test_an_unreachable_sandbox_is_a_502_problem() -> None:
    app = create_app(_settings(bakkt_base_url=f"http://127.0.0.1:{free_port()}"))
    async with await _client(app) as client:
        answer = await client.get("/demo/sandbox/clock")
    assert answer.status_code == 502
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["code"] == "sandbox_unreachable"


async def test_demo_routes_are_not_in_the_api_document(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/demo")]


async def test_production_mounts_no_demo_route() -> None:
    app = create_app(Settings(_env_file=None, app_env="production", **REAL_SECRETS))  # type: ignore[arg-type]
    mounted = [getattr(route, "path", "") for route in app.routes]
    assert not [p for p in mounted if p.startswith("/demo")]
    async with await _client(app) as client:
        for method, path in (
            ("GET", "/demo"),
            ("GET", "/demo/assets/app.js"),
            ("GET", "/demo/config"),
            ("POST", "/demo/token"),
            ("GET", "/demo/sandbox/clock"),
            ("POST", "/demo/sandbox/faults"),
        ):
            answer = await client.request(method, path, json={"partyRef": "alice"})
            assert answer.status_code == 404, (method, path)
            assert "eyJ" not in answer.text  # no JWT
