"""Retention: what the service forgets, and when. Each table's query is its owner's (idempotency
keys in `app.idempotency.repository`, webhook bodies in `app.webhooks.repository`, processes
silent for a day in `app.processes.repository`);
transactions and their history are never deleted."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core.metrics import METRICS, Metrics
from app.idempotency import repository as idempotency_repo
from app.processes import repository as processes_repo
from app.recovery.jobs import SessionFactory, cycle_start
from app.webhooks import repository as webhooks_repo

log = logging.getLogger("app.recovery")

PROCESS_MEMORY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class RetentionSummary:
    idempotency_keys_deleted: int
    webhook_bodies_cleared: int
    processes_forgotten: int = 0


async def apply_retention(
    session_factory: SessionFactory,
    settings: Settings,
    *,
    now: datetime | None = None,
    batch: int = 1000,
    metrics: Metrics | None = None,
) -> RetentionSummary:
    """Delete consumer idempotency keys past `expires_at` (10 days, as at Bakkt) and clear the raw
    body of webhook events older than WEBHOOK_BODY_RETENTION_DAYS (the event row, its refs and
    outcome stay). Batched, each batch its own short transaction, so it never holds many locks
    for long."""
    metrics = metrics or METRICS
    now = await cycle_start(session_factory, now)
    cutoff = now - timedelta(days=settings.webhook_body_retention_days)
    keys = await _in_batches(
        session_factory,
        lambda s: idempotency_repo.delete_expired(s, now=now, limit=batch),
        batch,
    )
    bodies = await _in_batches(
        session_factory,
        lambda s: webhooks_repo.clear_bodies(s, before=cutoff, limit=batch),
        batch,
    )
    # A day is far past every lease, so no claim still needs to know its holder is gone.
    async with session_factory() as session:
        processes = await processes_repo.delete_gone(session, before=now - PROCESS_MEMORY)
        await session.commit()
    metrics.inc("recovery_retention_deleted_total", keys, what="idempotency_keys")
    metrics.inc("recovery_retention_deleted_total", processes, what="service_processes")
    metrics.inc("recovery_retention_deleted_total", bodies, what="webhook_bodies")
    if keys or bodies:
        log.info("retention: %d idempotency keys deleted, %d webhook bodies cleared", keys, bodies)
    return RetentionSummary(keys, bodies, processes)


async def _in_batches(
    factory: SessionFactory, step: Callable[[AsyncSession], Awaitable[int]], batch: int
) -> int:
    total = 0
    while True:
        async with factory() as session:
            done = await step(session)
            await session.commit()
        total += done
        if done < batch:
            return total
