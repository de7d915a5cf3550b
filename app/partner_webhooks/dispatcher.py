"""The delivery job: events into delivery rows (fan-out), lanes claimed, events sent in order,
outcomes recorded. One cycle of it runs in the background workers' loop set.

A cycle keeps up to PARTNER_WEBHOOK_CONCURRENCY lanes (one party at one endpoint each) in flight
and claims more as they finish, so one slow receiver holds up only its own lane. Inside a lane,
events go one at a time in seq order and the lane stops at the first failure: that event is
retried on the schedule and the party's later events wait behind it.

Database work (fan-out, claims, recording) happens between sends, in short transactions of its
own; no transaction is open while a request is in flight. Outcomes are recorded in batches, so
at 500 events/s the database sees a few transactions a second, not one per event. A worker that
dies with sends in flight leaves its lanes to the lease: those events are sent again (at least
once), never skipped. Each claim names this process (its heartbeat in `service_processes`), so
when that heartbeat goes stale the next cycle of any replica takes the lanes back at once, without
waiting out the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.alerts.service import AlertSpec, add_alert_once
from app.config import Settings, webhook_secret_key
from app.core.clock import db_now
from app.core.metrics import METRICS, Metrics
from app.events.listen import Listener
from app.partner_webhooks import metrics as pm
from app.partner_webhooks import repository as repo
from app.partner_webhooks.models import DisabledReason, EndpointSource, EndpointStatus
from app.partner_webhooks.repository import ClaimedLane, EndpointTarget, PendingDelivery
from app.partner_webhooks.schedule import retry_delay
from app.partner_webhooks.sealing import SealingError, keys_of, unseal
from app.partner_webhooks.sender import Attempt, Outcome, Sender, redacted

log = logging.getLogger("app.partner_webhooks")

SessionFactory = async_sessionmaker[AsyncSession]

# Events fanned out per endpoint per pass, and how often a running cycle looks for new ones.
FANOUT_BATCH = 2000
FANOUT_EVERY = 0.1
# A cycle claims new lanes for this long, then lets the ones in flight finish and returns.
CLAIM_WINDOW = 10.0
# Outcomes are written when this many lanes have finished, or this long after the oldest.
FLUSH_LANES = 200
FLUSH_EVERY = 0.05

ALERT_DISABLED = "partner_webhook_endpoint_disabled"
ALERT_PARTY_BLOCKED = "partner_webhook_party_blocked"


def settings_endpoint_id(url: str) -> uuid.UUID:
    """A settings endpoint's id, the same in every replica and across restarts."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "fiat-onramp:partner-webhook:" + url)


def settings_endpoints(settings: Settings) -> list[tuple[uuid.UUID, str]]:
    """PARTNER_WEBHOOK_URLS as (id, url) rows."""
    return [(settings_endpoint_id(u), u) for u in settings.partner_webhook_urls]


def encode_event(event: dict[str, object]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


class CycleClock:
    """The cycle's clock: the database's (or a test's) at the start, moved on by the process's
    monotonic clock, so schedules agree across replicas and tests can move time."""

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._t0)


@dataclass(slots=True)
class _LaneResult:
    lane: ClaimedLane
    sent: list[tuple[PendingDelivery, Attempt, datetime]] = field(default_factory=list)

    @property
    def failure(self) -> tuple[PendingDelivery, Attempt, datetime] | None:
        if self.sent and not self.sent[-1][1].delivered:
            return self.sent[-1]
        return None


class Dispatcher:
    """One per process: the shared sender and what a cycle needs."""

    def __init__(
        self,
        factory: SessionFactory,
        settings: Settings,
        *,
        sender: Sender | None = None,
        metrics: Metrics | None = None,
        listen_url: URL | str | None = None,
        process_id: uuid.UUID | None = None,
    ) -> None:
        self.factory = factory
        self.settings = settings
        # The heartbeat that vouches for this process's claims (None: the lease alone).
        self.process_id = process_id
        self.sender = sender or Sender(settings)
        self.metrics = metrics or METRICS
        self._synced = False
        # Set by the sequencer's `events` notice (any replica's): new numbered events to send.
        self.wake = asyncio.Event()
        self._listener = (
            Listener(listen_url, "events", self._numbered, timeout=5.0)
            if listen_url is not None
            else None
        )
        self._sealing_keys = keys_of(settings)
        # Opened once per endpoint and stored value, not once per lane.
        self._opened: dict[tuple[uuid.UUID, tuple[str, ...]], tuple[list[bytes], str | None]] = {}
        self._settings_keys = [
            webhook_secret_key(s.get_secret_value()) for s in settings.partner_webhook_secrets
        ]

    def _numbered(self, _payload: str) -> None:
        self.wake.set()

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        await self.sender.aclose()

    # --- the cycle ------------------------------------------------------------------------------

    async def cycle(self, *, now: datetime | None = None) -> int:
        """Deliver what is due; returns how many events were sent (0: nothing was due)."""
        if self._listener is not None:
            await self._listener.ensure()
        # Cleared before fanning out: a notice during the cycle wakes the next one at once.
        self.wake.clear()
        clock = CycleClock(now or await self._db_now())
        if not self._synced:
            await self.sync_settings_endpoints(clock.now())
            self._synced = True
        await self._reclaim(clock.now())
        settings = self.settings
        concurrency = settings.partner_webhook_concurrency
        running: set[asyncio.Task[_LaneResult]] = set()
        finished: list[_LaneResult] = []
        gone: set[uuid.UUID] = set()
        targets: dict[uuid.UUID, EndpointTarget] = {}
        sent = 0
        started = time.monotonic()
        last_fanout = -1.0
        last_flush = time.monotonic()
        claiming = True
        try:
            while True:
                moment = time.monotonic()
                if claiming and moment - started > CLAIM_WINDOW:
                    claiming = False
                if claiming and moment - last_fanout >= FANOUT_EVERY:
                    await self._fan_out(clock.now())
                    last_fanout = moment
                free = concurrency - len(running)
                claimed_any = False
                if claiming and free > 0 and (free * 4 >= concurrency or not running):
                    lanes = await self._claim(clock, free)
                    if lanes:
                        claimed_any = True
                        if not targets or any(lane.endpoint_id not in targets for lane in lanes):
                            targets = await self._targets()
                        for lane in lanes:
                            running.add(
                                asyncio.create_task(
                                    self._deliver_lane(lane, targets, clock, gone),
                                    name=f"partner-webhook:{lane.party_ref}",
                                )
                            )
                if not running and not claimed_any:
                    break
                if running:
                    done, running = await asyncio.wait(
                        running, timeout=FANOUT_EVERY, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        result = task.result()
                        sent += len(result.sent)
                        finished.append(result)
                if finished and (
                    len(finished) >= FLUSH_LANES
                    or time.monotonic() - last_flush >= FLUSH_EVERY
                    or not running
                ):
                    batch, finished = finished, []
                    await self._record(batch, clock)
                    last_flush = time.monotonic()
            if finished:
                await self._record(finished, clock)
                finished = []
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            if finished:
                # Cancelled (the workers are stopping) or failed: keep what was delivered, or
                # it would be sent again when the lease runs out.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._record(finished, clock))
        return sent

    async def _db_now(self) -> datetime:
        async with self.factory() as session:
            found = await db_now(session)
            await session.rollback()
            return found

    async def sync_settings_endpoints(self, now: datetime) -> None:
        async with self.factory() as session:
            await repo.sync_settings_endpoints(session, settings_endpoints(self.settings), now)
            await session.commit()

    async def _fan_out(self, now: datetime) -> None:
        async with self.factory() as session:
            result = await repo.fan_out(session, now, FANOUT_BATCH)
            await session.commit()
        self.metrics.inc(pm.FANNED_OUT, result.added)

    async def _reclaim(self, now: datetime) -> None:
        async with self.factory() as session:
            taken = await repo.reclaim_from_gone_holders(
                session,
                now=now,
                stale_after=timedelta(seconds=self.settings.process_stale_after),
            )
            await session.commit()
        if taken:
            log.warning("%d partner webhook lane(s) taken back from a stopped process", taken)

    async def _claim(self, clock: CycleClock, limit: int) -> list[ClaimedLane]:
        now = clock.now()
        async with self.factory() as session:
            lanes = await repo.claim_lanes(
                session,
                now=now,
                lease_until=now + timedelta(seconds=self.settings.partner_webhook_lease),
                limit=limit,
                per_lane=self.settings.partner_webhook_batch,
                holder=self.process_id,
            )
            await session.commit()
        return lanes

    async def _targets(self) -> dict[uuid.UUID, EndpointTarget]:
        async with self.factory() as session:
            found = await repo.enabled_targets(session)
            await session.rollback()
        return found

    def _keys(self, target: EndpointTarget) -> tuple[list[bytes], str | None]:
        """The signing keys, and why there are none (None: there are)."""
        if not (target.source == EndpointSource.ADMIN and target.secrets):
            if not self._settings_keys:
                return [], "no signing secret configured"
            return self._settings_keys, None
        cache_key = (target.id, target.secrets)
        found = self._opened.get(cache_key)
        if found is None:
            keys: list[bytes] = []
            problem: str | None = None
            for stored in target.secrets:
                try:
                    keys.append(webhook_secret_key(unseal(stored, target.id, self._sealing_keys)))
                except SealingError as exc:
                    problem = f"a signing secret cannot be opened: {exc}"
                    log.error("webhook endpoint %s: %s", target.id, problem)
            # Signing with only some of the secrets would fail receivers that hold the others:
            # an unreadable secret stops the endpoint's deliveries until its key is back.
            found = ([], problem) if problem is not None else (keys, None)
            if len(self._opened) > 10_000:
                self._opened.clear()
            self._opened[cache_key] = found
        return found

    async def _deliver_lane(
        self,
        lane: ClaimedLane,
        targets: dict[uuid.UUID, EndpointTarget],
        clock: CycleClock,
        gone: set[uuid.UUID],
    ) -> _LaneResult:
        result = _LaneResult(lane)
        target = targets.get(lane.endpoint_id)
        if target is None:
            return result  # disabled since the claim; the lane waits for it
        keys, problem = self._keys(target)
        settings = self.settings
        # No send may start so late that it could still be in flight when the lease ends.
        stop_at = (
            time.monotonic()
            + settings.partner_webhook_lease
            - settings.partner_webhook_timeout
            - 5.0
        )
        for delivery in lane.deliveries:
            if lane.endpoint_id in gone or time.monotonic() > stop_at:
                break
            if keys:
                attempt = await self.sender.send(
                    target.url, keys, delivery.event_id, encode_event(delivery.event)
                )
            else:
                attempt = Attempt(Outcome.REFUSED, None, 0, problem)
            self.metrics.inc(pm.ATTEMPTS, outcome=attempt.outcome)
            result.sent.append((delivery, attempt, clock.now()))
            if not attempt.delivered:
                if attempt.gone:
                    gone.add(lane.endpoint_id)
                break
        return result

    # --- recording ------------------------------------------------------------------------------

    async def _record(self, results: Sequence[_LaneResult], clock: CycleClock) -> None:
        now = clock.now()
        settings = self.settings
        ok_endpoints = {
            r.lane.endpoint_id for r in results if any(a.delivered for _, a, _ in r.sent)
        }
        failed_endpoints = {
            r.lane.endpoint_id for r in results if r.failure is not None
        } - ok_endpoints
        gone_here = {
            r.lane.endpoint_id for r in results if (f := r.failure) is not None and f[1].gone
        }
        disable_after = timedelta(days=settings.partner_webhook_disable_after_days)
        async with self.factory() as session:
            await repo.lock_endpoints(session, sorted(ok_endpoints | failed_endpoints | gone_here))
            await repo.endpoints_succeeded(session, sorted(ok_endpoints), now)
            failing = await repo.endpoints_failed(session, sorted(failed_endpoints), now)
            to_disable = dict.fromkeys(gone_here, DisabledReason.GONE)
            for endpoint_id, status, since in failing:
                if status == EndpointStatus.ENABLED and now - since >= disable_after:
                    to_disable.setdefault(endpoint_id, DisabledReason.FAILING)
            for endpoint_id, reason in sorted(to_disable.items()):
                await self._disable(session, endpoint_id, reason, now)

            keys = sorted({(r.lane.endpoint_id, r.lane.party_ref) for r in results})
            locked = await repo.lock_lanes(session, keys)
            attempts = [
                repo.AttemptRow(
                    delivery_id=d.id,
                    endpoint_id=r.lane.endpoint_id,
                    event_id=d.event_id,
                    attempt=d.attempts + 1,
                    at=at,
                    outcome=a.outcome,
                    delivered=a.delivered,
                    status=a.status,
                    latency_ms=a.latency_ms,
                    error=a.error,
                )
                for r in results
                for d, a, at in r.sent
            ]
            await repo.record_attempts(session, attempts)
            updates: list[repo.LaneUpdate] = []
            for r in results:
                held = locked.get((r.lane.endpoint_id, r.lane.party_ref))
                if held is None or held.claim_token != r.lane.token:
                    # The lease ran out and another claim owns the lane now: its schedule is
                    # that claim's to set. What this one delivered is recorded all the same.
                    continue
                failure = r.failure
                if failure is None:
                    updates.append(
                        repo.LaneUpdate(
                            r.lane.endpoint_id,
                            r.lane.party_ref,
                            True,
                            None,
                            now,
                            attempted=bool(r.sent),
                        )
                    )
                    continue
                _, attempt, at = failure
                delay = retry_delay(
                    held.failures + 1,
                    settings.partner_webhook_retry_schedule,
                    retry_after=attempt.retry_after,
                )
                updates.append(
                    repo.LaneUpdate(
                        r.lane.endpoint_id,
                        r.lane.party_ref,
                        False,
                        at + timedelta(seconds=delay),
                        at,
                    )
                )
                since = held.failing_since or at
                if r.lane.endpoint_id not in to_disable and now - since >= disable_after:
                    # The endpoint takes other parties' events, so it stays enabled, but this
                    # party's events have been stuck behind one failing event for days.
                    await add_alert_once(
                        session,
                        AlertSpec(
                            kind=ALERT_PARTY_BLOCKED,
                            subject=f"webhook lane {r.lane.endpoint_id} {r.lane.party_ref}",
                            detail=(
                                f"Events of party {r.lane.party_ref} to webhook endpoint "
                                f"{r.lane.endpoint_id} have failed since {since.isoformat()} "
                                f"(last: {attempt.error}); its later events wait behind them."
                            ),
                            data={
                                "endpointId": str(r.lane.endpoint_id),
                                "partyRef": r.lane.party_ref,
                                "eventId": failure[0].event_id,
                            },
                        ),
                    )
            await repo.update_lanes(session, updates)
            await session.commit()

    async def _disable(
        self,
        session: AsyncSession,
        endpoint_id: uuid.UUID,
        reason: DisabledReason,
        now: datetime,
    ) -> None:
        url = await repo.disable_endpoint(session, endpoint_id, reason, now)
        if url is None:
            return
        why = (
            "it answered 410 Gone"
            if reason is DisabledReason.GONE
            else f"every delivery failed for {self.settings.partner_webhook_disable_after_days:g}"
            " days in a row"
        )
        self.metrics.inc(pm.DISABLED, reason=reason.value)
        log.warning(
            "partner webhook endpoint %s (%s) disabled: %s", endpoint_id, redacted(url), why
        )
        await add_alert_once(
            session,
            AlertSpec(
                kind=ALERT_DISABLED,
                subject=f"webhook endpoint {endpoint_id}",
                detail=(
                    f"Webhook endpoint {endpoint_id} ({redacted(url)}) was disabled because {why}. "
                    "Its undelivered events are kept; enable it again "
                    f"(POST /v1/webhook-endpoints/{endpoint_id}/enable) to deliver them."
                ),
                data={"endpointId": str(endpoint_id), "reason": reason.value},
            ),
        )

    async def apply_retention(self, *, now: datetime | None = None, batch: int = 5000) -> int:
        """Delivered rows (and their attempts) past PARTNER_WEBHOOK_LOG_RETENTION_DAYS."""
        cutoff = (now or await self._db_now()) - timedelta(
            days=self.settings.partner_webhook_log_retention_days
        )
        removed = 0
        while True:
            async with self.factory() as session:
                n = await repo.delete_delivered(session, cutoff, batch)
                await session.commit()
            removed += n
            if n < batch:
                return removed
