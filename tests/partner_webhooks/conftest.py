"""Fixtures of the partner webhook tests: a real HTTP receiver on a port of its own whose answers
each test scripts, events written as the outbox writes them (numbered, as the sequencer leaves
them), and the dispatcher on sessions inside the test's rolled-back transaction.

The dispatcher fans out from every enabled endpoint in the database, and other tests may leave
committed ones behind: `isolate()` disables every endpoint but the test's own, inside its
rolled-back transaction.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.dev_token import mint_dev_token
from app.config import Settings
from app.core.metrics import Metrics
from app.db import create_session_factory
from app.main import create_app
from app.partner_webhooks.dispatcher import Dispatcher

SECRET_A = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQQ=="  # 32 bytes of "A"
SECRET_B = "whsec_" + "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQg=="  # 32 bytes of "B"

Execute = Callable[..., Awaitable[Any]]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


# What the receiver answers one request: (status, headers, seconds to wait first).
Reply = tuple[int, dict[str, str], float]


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every request and answers as `decide` says
    (200 by default). `delivered` holds the requests it answered 2xx, in arrival order."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    delivered: list[Received] = field(default_factory=list)
    decide: Callable[[Received], Reply] = lambda _r: (200, {}, 0.0)

    def ids_of(self, party: str) -> list[str]:
        return [r.event["id"] for r in self.delivered if r.event["partyRef"] == party]

    def attempts_of(self, party: str) -> list[str]:
        return [r.event["id"] for r in self.received if r.event["partyRef"] == party]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()

    async def handle(request: web.Request) -> web.StreamResponse:
        item = Received(dict(request.headers), await request.read())
        found.received.append(item)
        status, headers, delay = found.decide(item)
        if delay:
            await asyncio.sleep(delay)
        if 200 <= status < 300:
            found.delivered.append(item)
        return web.Response(status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://127.0.0.1:{port}/hooks"
    try:
        yield found
    finally:
        await runner.cleanup()


@pytest.fixture
def factory(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    made = create_session_factory(connection)  # type: ignore[arg-type]
    made.configure(join_transaction_mode="create_savepoint")
    return made


@pytest.fixture
def sql(connection: AsyncConnection) -> Execute:
    async def run(statement: str, params: dict[str, Any] | None = None) -> Any:
        result = await connection.execute(text(statement), params or {})
        return result.all() if result.returns_rows else None

    return run


@pytest.fixture
def wsettings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            # Generous: the receiver shares the test's event loop on a loaded machine, and an
            # attempt that times out is a different test's subject.
            "partner_webhook_timeout": 3.0,
            "partner_webhook_lease": 30.0,
            "partner_webhook_concurrency": 8,
        }
    )


@pytest.fixture
async def dispatcher(
    factory: async_sessionmaker[AsyncSession], wsettings: Settings
) -> AsyncIterator[Dispatcher]:
    made = Dispatcher(factory, wsettings, metrics=Metrics())
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
def party() -> Callable[[], str]:
    return lambda: f"pw-{uuid.uuid4().hex[:12]}"


async def add_endpoint(
    sql: Execute,
    url: str,
    *,
    secrets: list[str] | None = None,
    event_types: list[str] | None = None,
    isolate: bool = True,
) -> uuid.UUID:
    """An admin endpoint starting after the newest event; with `isolate`, the only enabled one."""
    if isolate:
        await sql("UPDATE partner_webhook_endpoints SET status = 'DISABLED'")
    endpoint_id = uuid.uuid4()
    await sql(
        "INSERT INTO partner_webhook_endpoints (id, url, source, status, secrets, event_types, "
        "fanout_seq) VALUES (:id, :url, 'admin', 'ENABLED', :secrets, :types, "
        "(SELECT coalesce(max(seq), 0) FROM events))",
        {"id": endpoint_id, "url": url, "secrets": secrets or [SECRET_A], "types": event_types},
    )
    return endpoint_id


async def add_event(
    sql: Execute, party: str, type_: str = "transaction.completed", *, n: int = 0
) -> str:
    """An event as the outbox writes it and the sequencer numbers it."""
    event_id = f"evt_T{uuid.uuid4().hex[:25].upper()}"
    await sql(
        "INSERT INTO events (id, seq, type, version, party_ref, subject_id, data) VALUES "
        "(:id, (SELECT coalesce(max(seq), 0) + 1 FROM events), :type, 1, :party, NULL, "
        "CAST(:data AS jsonb))",
        {"id": event_id, "type": type_, "party": party, "data": json.dumps({"n": n})},
    )
    return event_id


async def lane_of(sql: Execute, endpoint_id: uuid.UUID, party: str) -> dict[str, Any]:
    rows = await sql(
        "SELECT next_attempt_at, failures, failing_since, claim_token FROM partner_webhook_lanes "
        "WHERE endpoint_id = :e AND party_ref = :p",
        {"e": endpoint_id, "p": party},
    )
    return dict(rows[0]._mapping)


async def endpoint_of(sql: Execute, endpoint_id: uuid.UUID) -> dict[str, Any]:
    rows = await sql(
        "SELECT status, disabled_reason, failing_since FROM partner_webhook_endpoints "
        "WHERE id = :e",
        {"e": endpoint_id},
    )
    return dict(rows[0]._mapping)


async def db_now(sql: Execute) -> datetime:
    rows = await sql("SELECT clock_timestamp()")
    value: datetime = rows[0][0]
    return value


Api = Callable[..., Any]


@pytest.fixture
def api(settings: Settings, engine: AsyncEngine, connection: AsyncConnection) -> Api:
    """`async with api(**settings_update) as http`: the app over ASGI, inside the test's
    rolled-back transaction, an admin token by default."""

    @asynccontextmanager
    async def build(**update: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(settings.model_copy(update=update), engine=engine)
        async with app.router.lifespan_context(app):
            app.state.session_factory = create_session_factory(connection)  # type: ignore[arg-type]
            app.state.session_factory.configure(join_transaction_mode="create_savepoint")
            token = mint_dev_token(settings, "backend", admin=True, ttl_seconds=600)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://test",
                headers={"Authorization": f"Bearer {token}"},
            ) as http:
                yield http

    return build
