"""What the request metrics and the JSON access line cost per request, in CPU microseconds.

    .venv/bin/python -m benchmarks.observability [--requests 20000]

A FastAPI app with one route is called straight through ASGI (no sockets, no HTTP parser), with
and without `RequestObservationMiddleware` and its access line written as a redacted JSON line
to /dev/null; the difference is what every request pays. Then the Bakkt client's per-call
additions with tracing off (a no-op span, the counters, the histogram). Process CPU time, best of
5 rounds, so a busy machine inflates both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from opentelemetry import propagate, trace

from app.core.logs import guarded_handler, lean_records
from app.core.metrics import Metrics
from app.core.middleware import RequestIdMiddleware, RequestObservationMiddleware

ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def build(observed: bool) -> ASGI:
    app = FastAPI()

    @app.post("/v1/parties/{partyRef}/deposits", status_code=202)
    async def deposit(partyRef: str) -> dict[str, str]:
        return {"id": partyRef, "status": "PENDING"}

    if observed:
        app.add_middleware(RequestObservationMiddleware, metrics=Metrics())
    app.add_middleware(RequestIdMiddleware)
    return app


async def drive(app: ASGI, n: int) -> float:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/parties/alice/deposits",
        "raw_path": b"/v1/parties/alice/deposits",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-length", b"0")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:  # noqa: ARG001 - ASGI's signature
        return None

    started = time.process_time()
    for _ in range(n):
        await app(dict(scope), receive, send)
    return (time.process_time() - started) / n * 1e6


def bakkt_call_additions(n: int) -> float:
    metrics = Metrics()
    tracer = trace.get_tracer("bench")
    started = time.process_time()
    for _ in range(n):
        with tracer.start_as_current_span("bakkt transfer", attributes={"a": "b"}) as span:
            headers = {"x-tracking-id": "t"}
            propagate.inject(headers)
            metrics.bakkt_reachable(True)
            span.set_attribute("bakkt.outcome", "ok")
        metrics.bakkt_requests.labels("transfer", "ok").inc()
        metrics.bakkt_duration.labels("transfer").observe(0.01)
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    lean_records()  # as `serve` runs
    devnull = open(os.devnull, "w")
    access = logging.getLogger("app.access")
    access.addHandler(guarded_handler("json", devnull))
    access.setLevel(logging.INFO)
    access.propagate = False
    bare, observed = build(False), build(True)

    async def rounds() -> tuple[float, float]:
        await drive(bare, 500)
        await drive(observed, 500)
        plain = min([await drive(bare, args.requests) for _ in range(5)])
        full = min([await drive(observed, args.requests) for _ in range(5)])
        return plain, full

    plain, full = asyncio.run(rounds())
    bakkt = min(bakkt_call_additions(args.requests) for _ in range(5))
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"route alone                          {plain:8.1f} us CPU per request")
    print(f"+ request metrics + JSON access line {full:8.1f} us CPU per request")
    print(f"  added                              {full - plain:8.1f} us")
    print(f"Bakkt call additions (tracing off)   {bakkt:8.1f} us CPU per call")


if __name__ == "__main__":
    main()
