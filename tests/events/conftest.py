"""Fixtures of the events tests: the real service under uvicorn on a port (SSE needs a real
server: httpx's ASGI transport buffers a whole response), the Bakkt sandbox posting its webhooks
to it, and the sequencer running as the workers run it. Data is committed: each test uses
parties of its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.dev_token import mint_dev_token
from app.config import Settings
from app.db import create_session_factory
from app.events.sequencer import Sequencer
from app.main import create_app
from app.recovery.worker import Job, Workers
from bakkt_sandbox.testing import RunningSandbox, running_sandbox

FAST_RETRIES = [0.05, 0.1, 0.2, 0.4]


@dataclass
class Feed:
    """The running service, as an app and as its back end would call it."""

    http: httpx.AsyncClient
    app: FastAPI
    base_url: str
    settings: Settings

    def auth(self, party: str, *, admin: bool = False) -> dict[str, str]:
        token = mint_dev_token(self.settings, party, admin=admin, ttl_seconds=600)
        return {"Authorization": f"Bearer {token}"}

    @property
    def admin(self) -> dict[str, str]:
        return self.auth("back-end", admin=True)

    async def post(self, party: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        headers = {**self.auth(party), "Idempotency-Key": f"key-{uuid.uuid4().hex}"}
        return await self.http.post(f"/v1/parties/{party}{path}", json=body, headers=headers)

    async def get(self, party: str, path: str) -> Any:
        response = await self.http.get(f"/v1/parties/{party}{path}", headers=self.auth(party))
        assert response.status_code == 200, response.text
        return response.json()

    async def events(self, party: str, after: str | None = None) -> list[dict[str, Any]]:
        """Every event of the party after `after`, walking the pages."""
        out: list[dict[str, Any]] = []
        cursor = after
        while True:
            params: dict[str, Any] = {"limit": 500}
            if cursor is not None:
                params["after"] = cursor
            response = await self.http.get(
                f"/v1/parties/{party}/events", params=params, headers=self.auth(party)
            )
            assert response.status_code == 200, response.text
            page = response.json()
            out += page["data"]
            cursor = page["next"]
            if not page["hasMore"]:
                return out

    async def types(self, party: str) -> list[str]:
        return [e["type"] for e in await self.events(party)]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Until `check` holds (a condition, never a fixed sleep)."""
    for _ in range(int(within / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"not true within {within} s")


def sequencer_workers(engine: AsyncEngine, *, interval: float = 0.5) -> Workers:
    """The sequencer job alone, as the recovery workers run it (LISTEN, poll fallback)."""
    sequencer = Sequencer(create_session_factory(engine), engine.url, batch=1000)
    job = Job(
        "sequence_events",
        interval,
        sequencer.cycle,
        1000,
        wake=sequencer.wake,
        close=sequencer.close,
    )
    return Workers([job])


@asynccontextmanager
async def serving(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Feed]:
    """The service on 127.0.0.1 and an ephemeral port, in this event loop."""
    app = create_app(settings, engine=engine)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            yield Feed(http, app, base, settings)
    finally:
        # Open streams end first, as on SIGTERM, or uvicorn would wait for them.
        app.state.draining.set()
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(
        time_scale=0, webhook_url="", webhook_retry_schedule=FAST_RETRIES, webhook_timeout=5.0
    ) as sb:
        yield sb


@pytest.fixture(scope="module")
async def feed_settings(settings: Settings, sandbox: RunningSandbox) -> Settings:
    return settings.model_copy(
        update={
            "bakkt_base_url": sandbox.base_url,
            "bakkt_transfer_max_attempts": 2,
            "bakkt_retry_backoff_base": 0.01,
            "bakkt_retry_backoff_cap": 0.02,
            "events_stream_heartbeat": 0.3,
            "events_stream_poll_interval": 0.5,
        }
    )


@pytest.fixture(scope="module")
async def feed(
    feed_settings: Settings, engine: AsyncEngine, sandbox: RunningSandbox
) -> AsyncIterator[Feed]:
    workers = sequencer_workers(engine)
    workers.start()
    try:
        async with serving(feed_settings, engine) as running:
            await sandbox.set_webhook_mode(url=f"{running.base_url}/webhooks/bakkt")
            yield running
    finally:
        await workers.stop()


@pytest.fixture
def party() -> str:
    return f"ev-{uuid.uuid4().hex[:12]}"
