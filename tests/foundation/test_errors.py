from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.errors import Conflict, NotFound
from app.main import create_app


class _Body(BaseModel):
    amount: int = Field(gt=0)
    note: str


@pytest.fixture
async def error_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)

    @app.get("/boom/not-found")
    async def not_found() -> None:
        raise NotFound("transaction 42 does not exist")

    @app.get("/boom/conflict")
    async def conflict() -> None:
        raise Conflict("still running", headers={"Retry-After": "1"}, extra={"retryable": True})

    @app.post("/boom/validate")
    async def validate(body: _Body) -> dict[str, int]:
        return {"amount": body.amount}

    @app.get("/boom/bug")
    async def bug() -> None:
        raise RuntimeError("secret internals: token=abc")

    @app.get("/boom/db-down")
    async def db_down() -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    @app.get("/boom/socket-gone")
    async def socket_gone() -> None:
        # A Unix-socket Postgres that is down: the driver's connect raises FileNotFoundError.
        engine = create_async_engine("postgresql+asyncpg://postgres@/postgres?host=/nonexistent")
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    @app.get("/boom/missing-file")
    async def missing_file() -> None:
        raise FileNotFoundError("/etc/not-a-database")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


async def test_app_error_becomes_problem_json_with_stable_code(
    error_client: httpx.AsyncClient,
) -> None:
    response = await error_client.get("/boom/not-found", headers={"x-request-id": "req-12345678"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "not_found"
    assert body["status"] == 404
    assert body["detail"] == "transaction 42 does not exist"
    assert body["instance"] == "/boom/not-found"
    assert body["requestId"] == "req-12345678"
    assert body["type"].endswith("/not-found")
    assert response.headers["x-request-id"] == "req-12345678"


async def test_app_error_carries_its_headers_and_extra_members(
    error_client: httpx.AsyncClient,
) -> None:
    response = await error_client.get("/boom/conflict")
    assert response.status_code == 409
    assert response.headers["retry-after"] == "1"
    assert response.json()["retryable"] is True


async def test_validation_error_is_422_listing_the_offending_fields(
    error_client: httpx.AsyncClient,
) -> None:
    response = await error_client.post("/boom/validate", json={"amount": -5})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "validation_failed"
    by_name = {e["name"]: e for e in body["errors"]}
    assert set(by_name) == {"amount", "note"}
    assert by_name["amount"]["code"] == "greater_than"
    assert by_name["note"]["code"] == "missing"


async def test_validation_error_does_not_echo_the_rejected_value(
    error_client: httpx.AsyncClient,
) -> None:
    response = await error_client.post(
        "/boom/validate", json={"amount": "processor-sandbox-SECRET", "note": "x"}
    )
    assert response.status_code == 422
    assert "processor-sandbox-SECRET" not in response.text


async def test_unknown_route_is_problem_json_404(error_client: httpx.AsyncClient) -> None:
    response = await error_client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_unexpected_exception_is_500_without_internals(
    error_client: httpx.AsyncClient,
) -> None:
    response = await error_client.get("/boom/bug")
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert "token=abc" not in response.text
    assert "Traceback" not in response.text


async def test_database_outage_is_503_with_a_clear_code(error_client: httpx.AsyncClient) -> None:
    response = await error_client.get("/boom/db-down")
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert response.headers["retry-after"]


async def test_unreachable_unix_socket_database_is_503(error_client: httpx.AsyncClient) -> None:
    response = await error_client.get("/boom/socket-gone")
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"


async def test_file_not_found_outside_the_driver_is_a_500(error_client: httpx.AsyncClient) -> None:
    response = await error_client.get("/boom/missing-file")
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"


async def test_oversized_body_is_413_before_parsing(error_client: httpx.AsyncClient) -> None:
    response = await error_client.post(
        "/boom/validate",
        content=b'{"note": "' + b"x" * (70 * 1024) + b'", "amount": 1}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_database_outage_answer_keeps_the_connection_usable(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Over a real server: an exception that escapes to the server makes uvicorn log it and close
    # the keep-alive connection, and a client's next request on it can get no answer at all.
    app = create_app(settings)

    @app.get("/boom/socket-gone")
    async def socket_gone() -> None:
        engine = create_async_engine("postgresql+asyncpg://postgres@/postgres?host=/nonexistent")
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as http:
            answers = [await http.get("/boom/socket-gone") for _ in range(3)]
    finally:
        server.should_exit = True
        await task
    assert [a.status_code for a in answers] == [503, 503, 503]
    escaped = [r for r in caplog.records if r.name == "uvicorn.error" and r.levelno >= 40]
    assert escaped == [], "the exception reached the server, which closes the connection"
