"""/docs and /redoc load everything from the service: no CDN, no web fonts."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from app.config import Settings
from app.main import create_app


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # No database: the documentation pages do no I/O.
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url="postgresql://nobody@127.0.0.1:9/none", workers_enabled=False
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


def _referenced_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        (
            "/docs",
            {
                "/docs-assets/swagger-ui/swagger-ui-bundle.js": "javascript",
                "/docs-assets/swagger-ui/swagger-ui.css": "text/css",
                "/docs-assets/swagger-ui/favicon-32x32.png": "image/png",
            },
        ),
        ("/redoc", {"/docs-assets/redoc/redoc.standalone.js": "javascript"}),
    ],
)
async def test_documentation_page_loads_only_the_services_own_assets(
    http: httpx.AsyncClient, page: str, assets: dict[str, str]
) -> None:
    response = await http.get(page)
    assert response.status_code == 200
    html = response.text
    urls = _referenced_urls(html)
    assert set(assets) <= set(urls)
    assert all(url.startswith("/") for url in urls), urls
    assert "googleapis" not in html
    assert "cdn." not in html
    for url, content_type in assets.items():
        asset = await http.get(url)
        assert asset.status_code == 200, url
        assert content_type in asset.headers["content-type"]
        assert len(asset.content) > 500


async def test_pages_follow_a_proxy_prefix(http: httpx.AsyncClient) -> None:
    assert "'/openapi.json'" in (await http.get("/docs")).text
    app = create_app(Settings(_env_file=None, workers_enabled=False))  # type: ignore[call-arg]
    transport = httpx.ASGITransport(app=app, root_path="/funding")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as prefixed:
        page = (await prefixed.get("/docs")).text
    assert "/funding/docs-assets/swagger-ui/swagger-ui-bundle.js" in page
    assert "'/funding/openapi.json'" in page


async def test_documentation_routes_are_not_in_the_openapi_document(
    http: httpx.AsyncClient,
) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]


async def test_licences_ship_with_the_vendored_assets(http: httpx.AsyncClient) -> None:
    for url in ("/docs-assets/swagger-ui/LICENSE", "/docs-assets/redoc/LICENSE"):
        response = await http.get(url)
        assert response.status_code == 200
        assert "License" in response.text or "LICENSE" in response.text
