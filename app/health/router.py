"""Liveness (no I/O) and readiness (database reachable, schema at or past this build's head)."""

from __future__ import annotations

import asyncio
import re
from functools import lru_cache
from typing import Any

from alembic.script import ScriptDirectory
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import migrate

router = APIRouter(tags=["health"])

_REVISION_NUMBER = re.compile(r"^(\d+)")


@lru_cache(maxsize=1)
def _lineage() -> dict[str, str | None]:
    """Each revision this build ships, with its parent (revisions are linear)."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    parents: dict[str, str | None] = {}
    for revision in script.walk_revisions():
        down = revision.down_revision
        parents[revision.revision] = down if isinstance(down, str) or down is None else down[0]
    return parents


def _is_at_or_past(current: str | None, head: str | None) -> bool:
    """During a rolling deploy the Job migrates before the old pods are gone; migrations are
    expand/contract (docs/operations.md), so an old pod keeps working on a newer schema. A known
    revision is past head when head is among its ancestors; a revision this build does not ship
    is a later release's when its number is higher (numbering that tests/deploy checks)."""
    if current == head:
        return True
    parents = _lineage()
    if current in parents:
        walk: str | None = current
        while walk is not None:
            if walk == head:
                return True
            walk = parents.get(walk)
        return False
    newer = _REVISION_NUMBER.match(current or "")
    ours = _REVISION_NUMBER.match(head or "")
    return bool(newer and ours and int(newer.group(1)) > int(ours.group(1)))


@router.get("/healthz", summary="The process is alive (no I/O)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable and its schema is at or past this build's migrations",
    responses={503: {"description": "Not ready; the body names what is not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    draining = getattr(request.app.state, "draining", None)
    if draining is not None and draining.is_set():
        # Shutting down (SIGTERM): out of the load balancer while the last requests finish.
        return JSONResponse({"status": "draining", "checks": {}}, status_code=503)
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
        elif _is_at_or_past(current, head):
            checks["migrations"] = {"ok": True, "revision": current, "expected": head}
        else:
            ready = False
            checks["migrations"] = {
                "ok": False,
                "revision": current,
                "expected": head,
                "detail": "run `fiat-onramp migrate`"
                if current is None or current in _lineage()
                else "unknown revision, not a later one than this build's head",
            }
    except Exception as exc:
        ready = False
        checks["database"] = {"ok": False, "detail": f"unreachable ({type(exc).__name__})"}
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )
