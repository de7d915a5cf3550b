"""Finishing consumer requests that died after writing their transaction: the answer a retry
with the same Idempotency-Key would have got, stored once the transaction has settled. Run by
the recovery worker beside settling (docs/recovery.md)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.metrics import METRICS, Metrics
from app.funding import repository as funding_repo
from app.funding.repository import UNSETTLED
from app.funding.schemas import dump
from app.funding.views import transaction_out
from app.idempotency import repository as repo

# A consumer request being finished holds its key this long while the answer is stored.
FINISH_LEASE = timedelta(seconds=30)


async def finish_abandoned_requests(
    session_factory: async_sessionmaker[AsyncSession],
    *,
    limit: int = 100,
    stale_after: timedelta = timedelta(seconds=6),
    metrics: Metrics | None = None,
) -> int:
    """Store the answer of consumer requests that died after writing their transaction, once the
    transaction is settled: what the funding API's own resume would answer (202 with the
    transaction as it is now). A later retry with the same Idempotency-Key replays it. Keys whose
    lease is still live and whose holding process is alive (a retry holds them) are left alone.
    Returns how many it finished."""
    metrics = metrics or METRICS
    finished = 0
    async with session_factory() as session:
        found = await repo.abandoned_requests(session, limit=limit, stale_after=stale_after)
        await session.rollback()
        for key_id, transaction_id in found:
            # Taking the key over is atomic with the lease check: a retry that renewed it first
            # wins and we skip it.
            # Held by no process: the take-over and the answer commit together below.
            taken = await repo.take_over(
                session, key_id, FINISH_LEASE, holder_id=None, stale_after=stale_after
            )
            if taken is None:
                await session.rollback()
                continue
            txn = await funding_repo.get_transaction_by_id(session, transaction_id)
            if txn is None or txn.status in UNSETTLED:
                await session.rollback()
                continue
            body = dump(transaction_out(txn))
            if await repo.finish(session, key_id, 202, body):
                finished += 1
            await session.commit()
    metrics.inc("recovery_requests_finished_total", finished)
    return finished
