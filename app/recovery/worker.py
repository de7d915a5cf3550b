"""The background workers: one loop per recovery job, inside the service or as their own process.

Each loop runs a bounded cycle, then waits a jittered interval (at once again when the cycle
found a full batch). A cycle that fails is logged and retried after a backoff; a database outage
is logged once when it starts and once when it ends, and never ends the process. `stop()` ends
every loop promptly: a cycle still talking to Bakkt after the grace period is cancelled, which
is safe because its claims are leases that simply run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bakkt.breaker import CircuitBreaker
from app.bakkt.client import BakktClient
from app.bakkt.errors import BakktError
from app.bakkt.setup import bakkt_breaker, bakkt_config
from app.config import Settings
from app.core import tracing
from app.core.backoff import backoff
from app.core.context import request_id_var
from app.core.metrics import METRICS, Metrics
from app.db import create_engine, create_session_factory
from app.errors import is_database_unavailable
from app.events.sequencer import Sequencer
from app.idempotency.finisher import finish_abandoned_requests
from app.partner_webhooks.dispatcher import Dispatcher
from app.processes.service import ProcessHeartbeat
from app.recovery.jobs import SessionFactory
from app.recovery.links import expire_abandoned_links
from app.recovery.reconcile import run_scheduled_reconcile
from app.recovery.retention import apply_retention
from app.recovery.settle import settle_unknown
from app.recovery.sweep import sweep_pending
from app.webhooks.service import rematch_parked

log = logging.getLogger("app.recovery")

# Backoff after a failed cycle: 1, 2, 4 ... s, capped.
ERROR_BACKOFF_CAP = 60.0
# How often the scheduled reconciliation checks whether it is due (it runs once per interval).
RECONCILE_CHECK_INTERVAL = 300.0
# Events numbered per sequencer run (a fuller run is followed by another at once).
SEQUENCER_BATCH = 1000
# How often Bakkt's heartbeat is asked (the `bakkt_up` gauge; while the circuit is open, the
# probe that closes it once Bakkt answers again).
HEARTBEAT_INTERVAL = 60.0
_rng = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    interval: float
    # One cycle; returns how much it did. A cycle that did `full_batch` or more runs again soon.
    cycle: Callable[[], Awaitable[int]]
    full_batch: int | None = None
    # Skipped while the Bakkt circuit is open.
    uses_bakkt: bool = False
    # Set by someone with news for the job (a Postgres notification): the wait ends at once.
    wake: asyncio.Event | None = None
    # Called once its loop has ended (a connection of its own to close).
    close: Callable[[], Awaitable[None]] | None = None


def service_jobs(
    session_factory: SessionFactory,
    bakkt: BakktClient,
    settings: Settings,
    metrics: Metrics,
    dispatcher: Dispatcher | None = None,
) -> list[Job]:
    """The recovery jobs of docs/recovery.md, with their intervals from the settings, and the
    delivery of partner webhooks (docs/partner-webhooks.md) when a dispatcher is given."""
    batch = settings.recovery_batch_size

    async def settle() -> int:
        done = await settle_unknown(session_factory, bakkt, settings, metrics=metrics)
        await finish_abandoned_requests(
            session_factory,
            stale_after=timedelta(seconds=settings.process_stale_after),
            metrics=metrics,
        )
        return done

    async def sweep() -> int:
        return await sweep_pending(session_factory, bakkt, settings, metrics=metrics)

    async def rematch() -> int:
        done = await rematch_parked(session_factory, limit=batch)
        metrics.inc("recovery_webhook_rematched_total", done)
        return done

    async def reconcile() -> int:
        summary = await run_scheduled_reconcile(session_factory, bakkt, settings, metrics=metrics)
        return 0 if summary is None else summary.transactions_seen

    async def heartbeat() -> int:
        with contextlib.suppress(BakktError):
            await bakkt.heartbeat()
        return 0

    async def expire_links() -> int:
        return await expire_abandoned_links(session_factory, settings, metrics=metrics)

    sequencer = Sequencer(
        session_factory,
        _database_url(session_factory, settings),
        batch=SEQUENCER_BATCH,
        min_gap=settings.events_sequencer_min_gap,
    )

    async def retention() -> int:
        result = await apply_retention(session_factory, settings, metrics=metrics)
        return result.idempotency_keys_deleted + result.webhook_bodies_cleared

    deliveries: list[Job] = []
    if dispatcher is not None:
        deliveries = [
            # Runs again at once after a cycle that sent anything (a backlog drains without
            # waiting out the interval),
            # and is woken by the sequencer's notice of newly numbered events.
            Job(
                "partner_webhooks",
                settings.partner_webhook_interval,
                dispatcher.cycle,
                1,
                wake=dispatcher.wake,
                close=dispatcher.aclose,
            ),
            Job(
                "partner_webhook_retention", settings.retention_interval, dispatcher.apply_retention
            ),
        ]
    return [
        *deliveries,
        Job("settle", settings.recovery_settle_interval, settle, batch, uses_bakkt=True),
        Job("sweep", settings.recovery_sweep_interval, sweep, batch, uses_bakkt=True),
        Job("rematch_webhooks", settings.recovery_rematch_interval, rematch, batch),
        Job(
            "reconcile",
            min(RECONCILE_CHECK_INTERVAL, settings.reconcile_interval_hours * 3600),
            reconcile,
            uses_bakkt=True,
        ),
        Job("retention", settings.retention_interval, retention),
        Job("expire_links", settings.recovery_link_expiry_interval, expire_links, batch),
        # Not skipped while the circuit is open: it is what closes it when no request comes.
        Job("heartbeat", HEARTBEAT_INTERVAL, heartbeat),
        # Woken by each writer's commit; the interval is only the fallback poll.
        Job(
            "sequence_events",
            settings.events_sequencer_interval,
            sequencer.cycle,
            SEQUENCER_BATCH,
            wake=sequencer.wake,
            close=sequencer.close,
        ),
    ]


def _database_url(session_factory: SessionFactory, settings: Settings) -> URL | str:
    """Where the factory's engine connects (the sequencer's LISTEN goes there too)."""
    bind = session_factory.kw.get("bind")
    if isinstance(bind, AsyncEngine):
        return bind.url
    if settings.database_url is None:
        raise RuntimeError("the event sequencer needs DATABASE_URL or an engine-bound factory")
    return settings.database_url


class Workers:
    """Runs jobs, each in its own loop, until `stop()`."""

    def __init__(
        self,
        jobs: Sequence[Job],
        *,
        breaker: CircuitBreaker | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.jobs = list(jobs)
        self.breaker = breaker
        self.metrics = metrics or METRICS
        self.metrics.known_jobs(job.name for job in self.jobs)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def for_service(
        cls,
        session_factory: SessionFactory,
        bakkt: BakktClient,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        process_id: uuid.UUID | None = None,
    ) -> Workers:
        """`process_id`: this process's heartbeat, named in the claims that outlive a cycle."""
        metrics = metrics or METRICS
        dispatcher = Dispatcher(
            session_factory,
            settings,
            metrics=metrics,
            listen_url=_database_url(session_factory, settings),
            process_id=process_id,
        )
        return cls(
            service_jobs(session_factory, bakkt, settings, metrics, dispatcher),
            breaker=bakkt.breaker,
            metrics=metrics,
        )

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks)

    def start(self) -> None:
        """Start every loop as a task of the running event loop."""
        if self._tasks:
            raise RuntimeError("workers already started")
        self._stopping.clear()
        for job in self.jobs:
            self._tasks.append(asyncio.create_task(self._loop(job), name=f"recovery:{job.name}"))
        log.info("recovery workers started: %s", ", ".join(j.name for j in self.jobs))

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Let each loop finish its cycle for up to `grace` seconds, then cancel it."""
        self._stopping.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for job in self.jobs:
            if job.close is not None:
                try:
                    await job.close()
                except Exception:
                    log.exception("recovery job %s did not close cleanly", job.name)
        log.info("recovery workers stopped")

    async def wait(self) -> None:
        """Until `request_stop()` (a signal, in the standalone worker)."""
        await self._stopping.wait()

    async def _loop(self, job: Job) -> None:
        failures = 0
        in_outage = False
        # Replicas started together should not hit the database in step.
        await self._pause(job.interval * _rng.uniform(0.1, 0.5), job.wake)
        while not self._stopping.is_set():
            delay = job.interval * _rng.uniform(0.8, 1.2)
            # Each cycle has an id of its own, as a request has: on its log lines and, as
            # `x-tracking-id`, on its calls to Bakkt.
            request_id_var.set(str(uuid.uuid4()))
            try:
                if job.uses_bakkt and self.breaker is not None and self.breaker.is_open():
                    self.metrics.inc("recovery_skipped_circuit_open_total", worker=job.name)
                else:
                    done = await job.cycle()
                    if job.full_batch is not None and done >= job.full_batch:
                        delay = 0.0
                if in_outage:
                    log.warning("recovery job %s: the database answers again", job.name)
                in_outage = False
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = backoff(failures, base=1.0, cap=ERROR_BACKOFF_CAP)
                if is_database_unavailable(exc):
                    self.metrics.inc("job_errors_total", worker=job.name, cause="database")
                    if not in_outage:
                        log.warning(
                            "recovery job %s: database unavailable (%s: %s); backing off",
                            job.name,
                            type(exc).__name__,
                            exc,
                        )
                    in_outage = True
                else:
                    self.metrics.inc("job_errors_total", worker=job.name, cause="error")
                    log.exception(
                        "recovery job %s failed (%d in a row); next try in %.0f s",
                        job.name,
                        failures,
                        delay,
                    )
            await self._pause(delay, job.wake)

    async def _pause(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        if wake is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
            return
        waits = [asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(wake.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()


async def run_standalone(settings: Settings) -> None:
    """`fiat-onramp worker`: the recovery workers in their own process, until SIGTERM/SIGINT."""
    engine = create_engine(settings)
    provider = tracing.setup_tracing()
    if provider is not None:
        tracing.instrument_engine(engine, provider)
    try:
        factory = create_session_factory(engine)
        heartbeat = ProcessHeartbeat(
            engine.url, kind="worker", interval=settings.process_heartbeat_interval
        )
        await heartbeat.start()
        async with BakktClient(bakkt_config(settings), breaker=bakkt_breaker(settings)) as bakkt:
            workers = Workers.for_service(factory, bakkt, settings, process_id=heartbeat.id)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(signum, workers.request_stop)
            workers.start()
            try:
                await workers.wait()
            finally:
                await workers.stop()
                await heartbeat.stop()
                if provider is not None:
                    provider.force_flush()
    finally:
        await engine.dispose()
