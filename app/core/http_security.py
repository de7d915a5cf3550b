"""Security headers on every answer, and CORS for the partner's browser apps.

The API answers JSON to apps that hold a bearer token, so the defaults forbid everything a
browser could do with a response besides reading it: no framing, no sniffing a JSON body into
a script, no referrer, no caching of a balance by a shared cache, and a content security policy
that allows nothing at all. The documentation pages set a policy of their own (app/docs_assets.py)
and keep it: a header the application set is never replaced.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import AppEnv, Settings
from app.errors import PROBLEM_JSON, problem_body

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

# What a browser app sends besides the CORS-safelisted headers, and what it may read back.
CORS_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "X-Request-ID",
    "Last-Event-ID",
)
CORS_EXPOSED_HEADERS = (
    "X-Request-ID",
    "Retry-After",
    "Idempotent-Replayed",
    "WWW-Authenticate",
    "Location",
)
CORS_METHODS = ("GET", "POST", "DELETE")


def default_headers(settings: Settings) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy", API_CSP.encode()),
        (b"cache-control", b"no-store"),
    ]
    # TLS ends at the partner's ingress in production; in development a browser would pin
    # localhost to https for the max-age, which nobody wants.
    if settings.app_env is AppEnv.PRODUCTION and settings.hsts_max_age:
        value = f"max-age={settings.hsts_max_age}; includeSubDomains"
        headers.append((b"strict-transport-security", value.encode()))
    return headers


class SecurityHeadersMiddleware:
    """Adds `headers` to every HTTP answer that does not set them itself; `cacheable_prefixes`
    (static files) keep their own caching."""

    def __init__(
        self,
        app: ASGIApp,
        headers: list[tuple[bytes, bytes]],
        cacheable_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.headers = headers
        self.without_cache = [h for h in headers if h[0] != b"cache-control"]
        self.cacheable_prefixes = cacheable_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        defaults = self.headers
        if self.cacheable_prefixes and scope["path"].startswith(self.cacheable_prefixes):
            defaults = self.without_cache

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in defaults if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class StrictCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered as a problem like every other 4xx."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        return JSONResponse(
            problem_body(
                status=400,
                code="cors_not_allowed",
                title="Cross-origin request not allowed",
                detail=f"This cross-origin request is not allowed ({refused}); the service's "
                "CORS_ALLOWED_ORIGINS lists the origins that may call it.",
            ),
            status_code=400,
            media_type=PROBLEM_JSON,
            headers=headers,
        )


def install_cors(app: FastAPI, settings: Settings) -> None:
    """CORS only when origins are configured: without it a browser on another origin cannot
    read any answer, which is the safe default."""
    if not settings.cors_allowed_origins:
        return
    app.add_middleware(
        StrictCORSMiddleware,
        allow_origins=settings.cors_allowed_origins,
        allow_methods=CORS_METHODS,
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_EXPOSED_HEADERS,
        allow_credentials=settings.cors_allow_credentials,
        max_age=settings.cors_max_age,
    )
