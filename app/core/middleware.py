"""Plain ASGI middleware (no BaseHTTPMiddleware: it costs a task per request and breaks
streaming): a request id on every request, its metrics and access line, and a cap on request
body size."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.context import request_id_var
from app.core.metrics import Metrics
from app.errors import PROBLEM_JSON, problem_body

access_log = logging.getLogger("app.access")
# Requests no route matched (scanners, typos) share one label value, so they cannot grow the
# series without bound.
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else str(uuid.uuid4())
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class RequestObservationMiddleware:
    """Counts and times every request by route template, method and status, and writes one
    access line for it: method, route template, status, duration and (from the context) the
    request id. Never the raw path or query, never a header: the token stays out."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # (route, method, status) -> the counter and histogram children: `labels()` takes a
        # lock and builds a key on every call, a dict look-up does not.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            # An exception escaping here is answered 500 by Starlette's outermost middleware.
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template: str = getattr(route, "path", None) or UNMATCHED
            method: str = scope["method"] if scope["method"] in _METHODS else "OTHER"
            key = (template, method, status)
            series = self._series.get(key)
            if series is None:
                label = str(status)
                series = self._series[key] = (
                    self.metrics.http_requests.labels(template, method, label),
                    self.metrics.http_duration.labels(template, method, label),
                )
            series[0].inc()
            series[1].observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d %.1f ms",
                    method,
                    template,
                    status,
                    elapsed * 1000,
                    extra={
                        "method": method,
                        "route": template,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """Refuses bodies over the limit with 413 before the application parses anything."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, own_limit_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Routes that read their body with a cap of their own (and count what they refuse).
        self.own_limit_paths = own_limit_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.own_limit_paths:
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return

        received = 0
        too_large = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if too_large:
                # The app caught our exception while reading the body (FastAPI turns any error
                # there into a 400): its answer is replaced by the 413 that is the truth.
                if message["type"] == "http.response.start" and not response_started:
                    response_started = True
                    await self._reject(send, limit)
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._reject(send, limit)

    @staticmethod
    async def _reject(send: Send, limit: int) -> None:
        body = json.dumps(
            problem_body(
                status=413,
                code="payload_too_large",
                title="Request body too large",
                detail=f"The request body is larger than {limit} bytes.",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
