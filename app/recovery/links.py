"""Abandoned hosted links: a bank account whose hosted link page was handed out, never used, and
has expired stays PENDING forever unless we decide, since Bakkt sends no event for a page nobody
finished. Past the page's `expiresAt` plus HOSTED_LINK_EXPIRY_MARGIN it is FAILED with reason
`link_expired` and a history row. A BANK_ACCOUNT_LINK event that comes later still applies: Bakkt's
word about the account outranks our verdict (app/webhooks/service.py)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from app.config import Settings
from app.core.metrics import METRICS, Metrics
from app.funding import repository as funding_repo
from app.recovery.jobs import SessionFactory, cycle_start

log = logging.getLogger("app.recovery")


async def expire_abandoned_links(
    session_factory: SessionFactory,
    settings: Settings,
    *,
    now: datetime | None = None,
    batch: int | None = None,
    metrics: Metrics | None = None,
) -> int:
    """One batch, in one short transaction; returns how many accounts it expired."""
    metrics = metrics or METRICS
    now = await cycle_start(session_factory, now)
    cutoff = now - timedelta(seconds=settings.hosted_link_expiry_margin)
    async with session_factory() as session:
        expired = await funding_repo.expire_abandoned_links(
            session,
            expired_before=cutoff,
            now=now,
            limit=batch or settings.recovery_batch_size,
        )
        await session.commit()
    if expired:
        metrics.inc("recovery_links_expired_total", len(expired))
        log.info("expired %d abandoned hosted links", len(expired))
    return len(expired)
