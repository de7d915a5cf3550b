"""OpenTelemetry tracing: off by default, on with the standard `OTEL_*` settings.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); `OTEL_SDK_DISABLED=true`
turns it off whatever else is set. Everything else is the SDK's own reading of the standard
variables: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`,
`OTEL_EXPORTER_OTLP_HEADERS` / `_TIMEOUT` / `_COMPRESSION`, `OTEL_BSP_*`, `OTEL_PROPAGATORS`.

What a trace holds: the route's server span (FastAPI's instrumentation; `/healthz`, `/readyz`
and `/metrics` excluded), a span per SQL statement (SQLAlchemy's, on the app's engine), and a
span per call to Bakkt opened by the Bakkt client itself (app/bakkt/client.py): its transport
is aiohttp under httpx, which httpx's instrumentation does not see, so the client opens the
span and puts its `traceparent` on every attempt, beside `x-tracking-id`.

The SDK, exporter and instrumentations are the `otel` extra (the Docker image has it); asking
for tracing without it is a configuration error, not a silent no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.startup import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("app.tracing")

SERVICE_NAME = "fiat-onramp"
# Probes and scrapes: a span per kubelet probe would bury the requests in noise.
EXCLUDED_URLS = ("/healthz", "/readyz", "/metrics")

_provider: TracerProvider | None = None


def tracing_requested(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return any(e.strip().lower() not in ("", "none") for e in exporters.split(","))
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def check_settings(env: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters the OTEL_* settings ask for ([] when tracing is off), or ConfigError: run
    by `serve` before its workers start, so a wrong setting is one line and exit 2, not a
    traceback in every worker."""
    if not tracing_requested(env):
        return []
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise ConfigError(
            "OTEL_* settings ask for tracing, but the OpenTelemetry SDK is not installed: "
            "install fiat-onramp[otel] (the Docker image has it), or unset them"
        ) from None
    names = [n.strip().lower() for n in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")]
    names = [n for n in names if n not in ("", "none")]
    for name in names:
        if name not in ("otlp", "console"):
            raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not one of otlp, console, none")
    if "otlp" in names:
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        if protocol.strip() != "http/protobuf":
            # gRPC would bring grpcio (tens of MB) for what OTLP over HTTP does as well.
            raise ConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported; use "
                "http/protobuf (the collector's port 4318)"
            )
    return names


def setup_tracing(env: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """The process's tracer provider, made once from the environment; None when tracing is
    off. Raises ConfigError when it is asked for and cannot be had."""
    global _provider
    if _provider is not None:
        return _provider
    exporters = check_settings(env)
    if not exporters:
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes: dict[str, Any] = {}
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes["service.name"] = SERVICE_NAME
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Endpoint, headers, timeout and compression: the OTEL_EXPORTER_OTLP_* variables.
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing on: %s", ", ".join(exporters))
    return provider


def instrument_app(app: FastAPI, provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    excluded = [f"{path}$" for path in EXCLUDED_URLS]
    extra = os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "")
    excluded += [u.strip() for u in extra.split(",") if u.strip()]
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls=",".join(excluded),
        # One span per request, not three (the ASGI receive and send events).
        exclude_spans=["receive", "send"],
    )


def instrument_engine(engine: AsyncEngine, provider: TracerProvider) -> None:
    """A span per statement on this engine. The instrumentor is one per process and follows
    one engine: a second app in the process (the tests) moves it to its own."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    # Its declared range stops below SQLAlchemy 2.1, whose engine events it hooks are
    # unchanged (tests/funding/test_tracing.py checks the spans appear).
    instrumentor.instrument(
        engine=engine.sync_engine, tracer_provider=provider, skip_dep_check=True
    )
