"""Which listener serves what: the operations routes off the public port.

`/metrics`, `/docs`, `/redoc` and `/openapi.json` tell an attacker what the service runs and
how busy it is. With `INTERNAL_PORT` they are served on a second listener only (what a
cluster's Prometheus and its operators reach), and the public listener answers them 404 as it
answers any unknown path. The internal listener serves those routes and the probes, nothing
else: a consumer route reached through it would bypass whatever the public ingress enforces.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import PROBLEM_JSON, problem_body

DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DOCS_PREFIX = "/docs-assets/"
METRICS_PATH = "/metrics"
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# Set in the scope of requests that came in through the internal listener.
INTERNAL_SCOPE_KEY = "fiat_onramp.internal"


def _is_docs(path: str) -> bool:
    return path in DOCS_PATHS or path.startswith(DOCS_PREFIX)


class InternalListener:
    """The ASGI app of the internal listener: the service's own app, with requests marked."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, INTERNAL_SCOPE_KEY: True}
        await self.app(scope, receive, send)


class ListenerGate:
    """Inside the app: answers 404 to what the listener a request came through does not serve."""

    def __init__(self, app: ASGIApp, *, ops_public: bool, docs_enabled: bool) -> None:
        self.app = app
        self.ops_public = ops_public
        self.docs_enabled = docs_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._serves(scope):
            await _not_found(scope, send)
            return
        await self.app(scope, receive, send)

    def _serves(self, scope: Scope) -> bool:
        path: str = scope["path"]
        docs = _is_docs(path)
        if docs and not self.docs_enabled:
            return False
        ops = docs or path == METRICS_PATH
        if scope.get(INTERNAL_SCOPE_KEY):
            return ops or path in PROBE_PATHS
        return self.ops_public or not ops


async def _not_found(scope: Scope, send: Send) -> None:
    # Word for word what the router answers to a path it does not know.
    body = json.dumps(
        problem_body(
            status=404,
            code="not_found",
            title="Not Found",
            detail="Not Found",
            instance=scope["path"],
        )
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
