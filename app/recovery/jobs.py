"""What every recovery job that calls Bakkt shares: its claim, its clock, its bounded fan-out,
its schedule, and how it raises what Bakkt's word about a transaction asks an operator to see.

Every such job has the same shape, so any number of replicas can run it at once:
1. claim a bounded batch in one short transaction (`FOR NO KEY UPDATE SKIP LOCKED`) that pushes
   each row's `next_check_at` past a lease, and commit;
2. call Bakkt with no database transaction open;
3. record the outcome in a new short transaction, under the row lock, through
   `app.funding.bakkt_sync` (Bakkt's word) or `app.funding.state.transition` (our own verdict),
   re-reading the row first, since a webhook or the API may have moved it in the meantime.
A worker that dies between 1 and 3 leaves its rows to be claimed again when the lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.alerts.service import add_alert_once
from app.bakkt import BakktClient
from app.config import Settings
from app.core.backoff import backoff
from app.core.clock import db_now
from app.core.metrics import Metrics
from app.errors import is_database_unavailable
from app.funding.bakkt_sync import Applied
from app.funding.models import HistorySource, Transaction, TransactionMethod, TransactionType
from app.funding.models import TransactionStatus as Status
from app.funding.repository import UNSETTLED
from app.funding.state import source_of

log = logging.getLogger("app.recovery")

SessionFactory = async_sessionmaker[AsyncSession]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ClaimedTransaction:
    """What a claim read of a transaction: enough to call Bakkt without the session."""

    id: uuid.UUID
    party_ref: str
    bakkt_ref: str
    idempotency_key: str | None
    type: str
    method: str | None
    status: str
    amount_cents: int
    currency: str
    created_at: datetime
    check_attempts: int

    @classmethod
    def of(cls, txn: Transaction) -> ClaimedTransaction:
        return cls(
            txn.id,
            txn.party_ref,
            txn.bakkt_ref,
            txn.bakkt_idempotency_key,
            txn.type,
            txn.method,
            txn.status,
            txn.amount_cents,
            txn.currency,
            txn.created_at,
            txn.check_attempts,
        )

    @property
    def is_wire_withdrawal(self) -> bool:
        return self.type == TransactionType.WITHDRAWAL and self.method == TransactionMethod.WIRE


@dataclass(slots=True)
class JobRun:
    """One job cycle's collaborators and its clock; `actor`: the operator who forced it (an
    admin sync), whose name the history rows it writes carry."""

    factory: SessionFactory
    bakkt: BakktClient
    settings: Settings
    metrics: Metrics
    now: datetime
    actor: str | None = None

    @property
    def history_source(self) -> HistorySource:
        return source_of(HistorySource.SYNC, self.actor)


def circuit_open(bakkt: BakktClient) -> bool:
    """True while the client's breaker refuses calls: jobs skip their cycle instead of
    claiming rows they could not work on."""
    return bakkt.breaker is not None and bakkt.breaker.is_open()


async def cycle_start(factory: SessionFactory, now: datetime | None) -> datetime:
    """The cycle's clock: the database's (tests may hand in their own)."""
    if now is not None:
        return now
    async with factory() as session:
        found = await db_now(session)
        await session.rollback()
        return found


async def bounded(
    items: Sequence[T], limit: int, work: Callable[[T], Awaitable[None]], *, job: str
) -> None:
    """Run `work` for every item, at most `limit` at once. One item failing does not stop the
    others; a database outage is re-raised afterwards so the job loop backs off."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> None:
        async with gate:
            await work(item)

    results = await asyncio.gather(*(one(i) for i in items), return_exceptions=True)
    outage: BaseException | None = None
    for item, result in zip(items, results, strict=True):
        if not isinstance(result, BaseException):
            continue
        if isinstance(result, asyncio.CancelledError):
            raise result
        if is_database_unavailable(result):
            outage = outage or result
            continue
        log.error("%s: %r failed; it is retried after its lease", job, item, exc_info=result)
    if outage is not None:
        raise outage


def schedule_after_move(txn: Transaction, run: JobRun) -> None:
    if txn.status == Status.PENDING:
        txn.check_attempts = 0
        txn.next_check_at = run.now + timedelta(seconds=run.settings.recovery_sweep_first_check)
    elif txn.status not in UNSETTLED:
        txn.next_check_at = None


def back_off(txn: Transaction, run: JobRun, *, unknown: bool) -> None:
    settings = run.settings
    txn.check_attempts += 1
    if unknown:
        delay = backoff(
            txn.check_attempts,
            base=settings.recovery_unknown_backoff_base,
            cap=settings.recovery_unknown_backoff_cap,
        )
    else:
        # The first look came `first_check` after the move; each later one waits twice as long.
        delay = backoff(
            txn.check_attempts + 1,
            base=settings.recovery_sweep_first_check,
            cap=settings.recovery_sweep_backoff_cap,
        )
    txn.next_check_at = run.now + timedelta(seconds=delay)


async def raise_alert(session: AsyncSession, applied: Applied) -> bool:
    """The operator alert Bakkt's word asked for (a new hold, a conflict), once per subject."""
    if applied.alert is None:
        return False
    return await add_alert_once(session, applied.alert)
