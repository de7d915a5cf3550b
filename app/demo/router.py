"""HTTP only: the demo page, a development token for a party, and the sandbox's control API
under the service's own origin. `install_demo` is called by `create_app` in development only.

Why a forwarding route rather than CORS on the sandbox: the page then talks to one origin and
never needs to know where the sandbox listens (under docker compose the service reaches it as
`sandbox:8081`, a name the browser cannot resolve), and the sandbox stays shaped like Bakkt,
which sends no CORS headers: a sandbox that did would let a partner's browser code work in
development and fail against Bakkt.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from app.auth.dependencies import PARTY_REF_PATTERN
from app.auth.dev_token import mint_dev_token
from app.config import Settings
from app.errors import AppError, Conflict, NotFound

STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "demo"
PAGE_PATH = "/demo"
ASSETS_PATH = "/demo/assets"
SANDBOX_PREFIX = "/demo/sandbox/"
TOKEN_TTL_SECONDS = 3600
# The sandbox's longest control call is a webhook drain, which waits at most what it is asked.
SANDBOX_TIMEOUT = httpx.Timeout(30.0, connect=3.0)

# Only the page's own files: nothing inline, nothing from elsewhere.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
# One path segment of the control API as sent (still percent-encoded), never a dot segment.
_SEGMENT = re.compile(r"^[A-Za-z0-9_.~!$&'()*+,;=:@%-]+$")
_DOT_SEGMENTS = frozenset({".", "..", "%2e", "%2e%2e", ".%2e", "%2e."})

router = APIRouter(prefix=PAGE_PATH, include_in_schema=False)


class DevTokensUnavailable(Conflict):
    code = "dev_tokens_unavailable"
    title = "Development tokens need AUTH_JWT_SECRET"


class SandboxUnreachable(AppError):
    status_code = 502
    code = "sandbox_unreachable"
    title = "The Bakkt sandbox's control API does not answer"


class DevTokenRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    party_ref: Annotated[str, Field(pattern=PARTY_REF_PATTERN)]


class DevToken(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    token: str
    token_type: str = "Bearer"  # noqa: S105 - the scheme's name, not a secret
    party_ref: str
    expires_in: int


class DemoConfig(BaseModel):
    """What the page says about the flows it offers, from the service's own settings."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    transfer_max_attempts: int
    bakkt_read_timeout: float


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@router.get("")
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)


@router.get("/config")
async def config(request: Request) -> DemoConfig:
    settings = _settings(request)
    return DemoConfig(
        transfer_max_attempts=settings.bakkt_transfer_max_attempts,
        bakkt_read_timeout=settings.bakkt_read_timeout,
    )


@router.post("/token")
async def token(request: Request, response: Response, body: DevTokenRequest) -> DevToken:
    """A consumer token for any party, with no credentials asked: development only."""
    settings = _settings(request)
    if settings.auth_jwt_secret is None:
        raise DevTokensUnavailable(
            "AUTH_JWKS_URL is set, so tokens come from the identity provider; unset it to use "
            "the demo with development tokens."
        )
    response.headers["Cache-Control"] = "no-store"
    minted = mint_dev_token(settings, body.party_ref, ttl_seconds=TOKEN_TTL_SECONDS)
    return DevToken(token=minted, party_ref=body.party_ref, expires_in=TOKEN_TTL_SECONDS)


def _control_path(request: Request) -> str:
    """The part of the request's path after /demo/sandbox/, as sent (still percent-encoded, so
    a party ref with a slash stays one segment)."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    tail = raw.decode("latin-1").partition(SANDBOX_PREFIX)[2]
    segments = tail.split("/")
    if not tail or any(not _SEGMENT.match(s) or s.lower() in _DOT_SEGMENTS for s in segments):
        raise NotFound("Not found.")
    return tail


@router.api_route("/sandbox/{path:path}", methods=["GET", "POST", "DELETE"])
async def sandbox_control(request: Request) -> Response:
    """Forwards to the sandbox's `/sandbox/...` control API at BAKKT_BASE_URL, answering what
    it answered (its own error envelope included), so the page can show it as it came."""
    tail = _control_path(request)
    base = _settings(request).bakkt_base_url.rstrip("/")
    body = await request.body()
    headers = {"Content-Type": "application/json"} if body else {}
    try:
        async with httpx.AsyncClient(timeout=SANDBOX_TIMEOUT, follow_redirects=False) as http:
            upstream = await http.request(
                request.method,
                f"{base}/sandbox/{tail}",
                params=request.query_params,
                content=body or None,
                headers=headers,
            )
    except httpx.HTTPError as exc:
        raise SandboxUnreachable(
            f"{base}/sandbox did not answer ({type(exc).__name__}): is the sandbox running? "
            "`make dev` starts it beside the service."
        ) from None
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type", "application/json"),
    )


def install_demo(app: FastAPI) -> None:
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="demo-assets")
    app.include_router(router)
