"""/metrics, /docs, /redoc and /openapi.json off the public listener: on INTERNAL_PORT only, or
not at all; the internal listener serves those and the probes, nothing else."""

from __future__ import annotations

import pytest

from app.config import AppEnv, Settings
from tests.protect.conftest import ServiceFactory

OPS = ["/metrics", "/docs", "/redoc", "/openapi.json", "/docs-assets/redoc/redoc.standalone.js"]


async def _statuses(http: object, paths: list[str]) -> dict[str, int]:
    return {path: (await http.get(path)).status_code for path in paths}  # type: ignore[attr-defined]


async def test_by_default_in_development_the_public_listener_serves_everything(
    service: ServiceFactory,
) -> None:
    async with service() as svc:
        assert await _statuses(svc.http, OPS) == dict.fromkeys(OPS, 200)


async def test_with_an_internal_port_the_operations_routes_leave_the_public_listener(
    service: ServiceFactory, party: str
) -> None:
    async with service(internal_port=9100) as svc:
        public = await _statuses(svc.http, OPS)
        unknown = await svc.http.get("/nowhere")
        hidden = await svc.http.get("/metrics")
        own = await svc.http.get(f"/v1/parties/{party}/transactions", headers=svc.headers(party))
        async with svc.internal() as internal:
            served = await _statuses(internal, [*OPS, "/healthz", "/readyz"])

    assert public == dict.fromkeys(OPS, 404)
    # Word for word the answer to a path that does not exist, so a probe learns nothing.
    assert hidden.json() | {"requestId": None, "instance": None} == unknown.json() | {
        "requestId": None,
        "instance": None,
    }
    assert own.status_code == 200
    assert served == dict.fromkeys([*OPS, "/healthz", "/readyz"], 200)


async def test_the_internal_listener_serves_no_consumer_route_and_no_webhook(
    service: ServiceFactory, party: str
) -> None:
    async with service(internal_port=9100) as svc:
        async with svc.internal() as internal:
            read = await internal.get(
                f"/v1/parties/{party}/transactions", headers=svc.headers(party)
            )
            webhook = await internal.post("/webhooks/bakkt", content=b"{}")

    assert read.status_code == 404
    assert webhook.status_code == 404
    assert read.headers["content-type"] == "application/problem+json"


async def test_production_keeps_them_off_the_public_listener_unless_told(
    service: ServiceFactory,
) -> None:
    async with service(app_env=AppEnv.PRODUCTION) as svc:
        hidden = await _statuses(svc.http, OPS)
        health = await svc.http.get("/healthz")
    async with service(app_env=AppEnv.PRODUCTION, public_ops_routes=True) as svc:
        told = await _statuses(svc.http, OPS)

    assert hidden == dict.fromkeys(OPS, 404)
    assert health.status_code == 200
    assert told == dict.fromkeys(OPS, 200)


@pytest.mark.parametrize("internal_port", [None, 9100])
async def test_docs_can_be_turned_off_everywhere(
    service: ServiceFactory, internal_port: int | None
) -> None:
    docs = [p for p in OPS if p != "/metrics"]
    async with service(docs_enabled=False, internal_port=internal_port) as svc:
        public = await _statuses(svc.http, OPS)
        async with svc.internal() as internal:
            served = await _statuses(internal, OPS)

    assert {p: public[p] for p in docs} == dict.fromkeys(docs, 404)
    assert {p: served[p] for p in docs} == dict.fromkeys(docs, 404)
    assert served["/metrics"] == 200
    assert public["/metrics"] == (200 if internal_port is None else 404)


def test_blank_listener_settings_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # A ConfigMap or .env line left empty means the default, not a parse error.
    for name in ("INTERNAL_PORT", "INTERNAL_HOST", "PUBLIC_OPS_ROUTES"):
        monkeypatch.setenv(name, "")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.internal_port, settings.internal_host, settings.public_ops_routes) == (
        None,
        None,
        None,
    )
    assert settings.ops_routes_public is True
