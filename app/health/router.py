"""Liveness (no I/O) and readiness (database reachable, schema at the newest migration)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import migrate

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive (no I/O)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable and its schema is at the newest migration",
    responses={503: {"description": "Not ready; the body names what is not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    engine: AsyncEngine = request.app.state.engine
    checks: dict[str, Any] = {}
    ready = True
    try:
        async with asyncio.timeout(3):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            current = await migrate.current_revision(engine)
        checks["database"] = {"ok": True}
        head = request.app.state.schema_head
        if current == head:
            checks["migrations"] = {"ok": True, "revision": current}
        else:
            ready = False
            checks["migrations"] = {
                "ok": False,
                "revision": current,
                "expected": head,
                "detail": "run `fiat-onramp migrate`",
            }
    except Exception as exc:
        ready = False
        checks["database"] = {"ok": False, "detail": f"unreachable ({type(exc).__name__})"}
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )
