"""One consumer request, one trace: the route's span, its SQL and its call to Bakkt share a
trace id, Bakkt receives it as `traceparent`, and the log lines carry it."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.config import Settings
from app.core.logs import guarded_handler
from app.core.tracing import check_settings, tracing_requested
from app.db import create_session_factory
from app.main import create_app
from app.startup import ConfigError
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, link_account, with_key


@pytest.fixture
async def traced(
    api_settings: Settings, engine: AsyncEngine, connection: AsyncConnection
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The process's provider can be set once: the Bakkt client's tracer follows it.
    trace.set_tracer_provider(provider)
    # A heartbeat every 50 ms: were its renewals traced, they would land inside every test.
    fast_beat = api_settings.model_copy(update={"process_heartbeat_interval": 0.05})
    app = create_app(fast_beat, engine=engine, tracer_provider=provider)
    try:
        async with app.router.lifespan_context(app):
            factory = create_session_factory(connection)  # type: ignore[arg-type]
            factory.configure(join_transaction_mode="create_savepoint")
            app.state.session_factory = factory
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                yield http, exporter
    finally:
        SQLAlchemyInstrumentor().uninstrument()
        # Later tests record nothing: the processor is gone with the provider.
        provider.shutdown()


def test_tracing_is_off_unless_the_otel_settings_ask_for_it() -> None:
    assert not tracing_requested({})
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_requested({"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing_requested(
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    )


async def test_one_request_is_one_trace_through_the_database_and_bakkt(
    traced: tuple[httpx.AsyncClient, InMemorySpanExporter], auth: TokenFactory, sql: Execute
) -> None:
    http, exporter = traced
    party = f"p-{uuid.uuid4().hex[:12]}"
    headers = auth(party)
    await link_account(http, sql, party, headers)
    await http.get("/healthz")
    await http.get("/metrics")
    exporter.clear()
    out = io.StringIO()
    handler = guarded_handler("json", out)
    root = logging.getLogger()
    root.addHandler(handler)
    access = [logging.getLogger(n) for n in ("app.access", "bakkt_sandbox.access")]
    for logger in access:
        logger.setLevel(logging.INFO)
    try:
        deposit = await http.post(
            f"/v1/parties/{party}/deposits", json={"amount": "25.00"}, headers=with_key(headers)
        )
        await http.get("/healthz")
        await http.get("/metrics")
    finally:
        root.removeHandler(handler)
        for logger in access:
            logger.setLevel(logging.NOTSET)
    assert deposit.status_code == 202

    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [s.name for s in server] == ["POST /v1/parties/{partyRef}/deposits"]
    trace_id = server[0].context.trace_id
    ours = [s for s in spans if s.context.trace_id == trace_id]
    # Nothing else was traced: the probe, the scrape (and its statements) and the process
    # heartbeat's renewals are excluded.
    assert ours == list(spans), [(s.name, s.attributes) for s in spans if s not in ours]
    sql_spans = [s for s in ours if s.attributes and "db.statement" in s.attributes]
    sql_spans += [s for s in ours if s.attributes and "db.query.text" in s.attributes]
    assert len(sql_spans) >= 3
    [bakkt] = [s for s in ours if s.name == "bakkt transfer"]
    assert bakkt.kind is SpanKind.CLIENT
    assert bakkt.attributes is not None
    assert bakkt.attributes["bakkt.outcome"] == "ok"

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    hex_id = format(trace_id, "032x")
    [line] = [x for x in lines if x["logger"] == "app.access" and x["status"] == 202]
    assert line["trace_id"] == hex_id
    assert line["request_id"] == deposit.headers["x-request-id"]
    # The sandbox read the same trace from the `traceparent` it received with the transfer,
    # and the request id from `x-tracking-id`.
    sandbox = [
        line
        for line in lines
        if line["logger"] == "bakkt_sandbox.access" and "transfer" in line["message"]
    ]
    assert sandbox
    assert sandbox[0]["trace_id"] == hex_id
    assert sandbox[0]["request_id"] == deposit.headers["x-request-id"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_a_tracing_setting_that_cannot_be_had_is_a_configuration_error(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        check_settings(env)
    assert check_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == ["otlp"]
    assert check_settings({"OTEL_TRACES_EXPORTER": "console,none"}) == ["console"]
