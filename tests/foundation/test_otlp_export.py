"""`fiat-onramp serve` with only the standard OTEL_* settings sends its spans over OTLP/HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import REPO_ROOT

ROUTE_SPAN = "GET /v1/parties/{partyRef}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_spans_reach_an_otlp_collector(database_url: str, tmp_path: Path) -> None:
    received: list[ExportTraceServiceRequest] = []
    arrived = asyncio.Event()

    async def collect(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        received.append(export)
        names = {
            span.name
            for resource in export.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        }
        if ROUTE_SPAN in names:
            arrived.set()
        return web.Response(status=200)

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(collector)
    await runner.setup()
    collector_port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", collector_port).start()
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WORKERS_ENABLED": "false",
        "BAKKT_BASE_URL": "http://127.0.0.1:9",
        "FIAT_ONRAMP_MIGRATIONS": str(REPO_ROOT / "migrations"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "serve", "--port", str(port),
        cwd=tmp_path, env=env, start_new_session=True,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(120), httpx.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).is_success:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
            answer = await http.get(f"http://127.0.0.1:{port}/v1/parties/alice")
            assert answer.status_code == 401
            await arrived.wait()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            await proc.wait()
        await runner.cleanup()
    spans = [
        (resource.resource, span)
        for export in received
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for _, span in spans}
    assert ROUTE_SPAN in names
    # The probe was not traced.
    assert not any("healthz" in name for name in names)
    resource = spans[0][0]
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "fiat-onramp"
