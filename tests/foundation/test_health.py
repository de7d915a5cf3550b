from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.main import create_app


async def test_healthz_answers_without_touching_the_database() -> None:
    # An engine pointing nowhere: /healthz must still answer, because it does no I/O.
    settings = Settings(_env_file=None, database_url="postgresql://nobody@127.0.0.1:9/none")  # type: ignore[call-arg]
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_when_database_is_at_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["migrations"]["ok"] is True


async def test_readyz_names_the_unreachable_database() -> None:
    url = "postgresql+asyncpg://nobody@127.0.0.1:9/none"
    settings = Settings(_env_file=None, database_url=url)  # type: ignore[call-arg]
    engine = create_async_engine(url, connect_args={"timeout": 1})
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/readyz")
    await engine.dispose()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"]["ok"] is False


async def test_readyz_reports_a_schema_behind_head(database_url: str) -> None:
    settings = Settings(_env_file=None, database_url=database_url)  # type: ignore[call-arg]
    app = create_app(settings)
    app.state.schema_head = "9999_not_applied"
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/readyz")
    assert response.status_code == 503
    migrations = response.json()["checks"]["migrations"]
    assert migrations["ok"] is False
    assert migrations["expected"] == "9999_not_applied"
