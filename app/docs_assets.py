"""`/docs` (Swagger UI) and `/redoc` (ReDoc) with their assets served by the service itself.

FastAPI's defaults load both from a CDN, so the pages are blank on a machine without internet
and depend on a third party in production. The files under `app/static/docs/` are the
unmodified builds of the official npm packages, with their licences; docs/configuration.md
says which versions, their checksums, and how to update them.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(__file__).resolve().parent / "static" / "docs"
ASSETS_PATH = "/docs-assets"
DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    """The pages' own content security policy (app/core/http_security.py keeps it): scripts only
    from the service and the page's own inline scripts, by hash; inline styles, which Swagger
    UI's and ReDoc's components write; images as data: URIs; ReDoc's search worker from a blob.
    Nothing from another origin, and no framing."""
    scripts = ["'self'"] + [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(bytes(page.body).decode())
    ]
    page.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src {' '.join(scripts)}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return page


def install_docs(app: FastAPI) -> None:
    """Add the two documentation pages; `app` must be built with docs_url and redoc_url None."""
    assert app.openapi_url is not None  # noqa: S101 - a programming error, not input
    openapi_url = app.openapi_url
    title = app.title
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    def _root(request: Request) -> str:
        # Behind a proxy that strips a prefix, every URL in the page needs that prefix back.
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return _with_csp(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{title} - Swagger UI",
                swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_PATH}/swagger-ui/favicon-32x32.png",
                oauth2_redirect_url=root + OAUTH2_REDIRECT_PATH,
                # Its default sends the document's URL to validator.swagger.io for a badge.
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    async def oauth2_redirect() -> HTMLResponse:
        return _with_csp(get_swagger_ui_oauth2_redirect_html())

    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/swagger-ui/favicon-32x32.png",
            # Google Fonts is a CDN too; ReDoc falls back to the system's sans-serif.
            with_google_fonts=False,
        )
        return _with_csp(page)

    app.add_api_route(DOCS_PATH, swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        OAUTH2_REDIRECT_PATH, oauth2_redirect, methods=["GET"], include_in_schema=False
    )
    app.add_api_route(REDOC_PATH, redoc, methods=["GET"], include_in_schema=False)
