"""Every SQL statement on the partner webhook tables (and the reads of `events` they need).

Lock order, everywhere: endpoint rows before lane rows before delivery rows. Fan-out takes its
endpoints with SKIP LOCKED and then upserts lanes; the recorder locks the endpoints it changes
(sorted) before the lanes (sorted); so no two transactions of this package can wait on each other
in a cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.events.repository import StoredEvent
from app.events.service import event_json
from app.partner_webhooks.models import (
    DisabledReason,
    EndpointSource,
    EndpointStatus,
    WebhookEndpoint,
)

# --- endpoints ----------------------------------------------------------------------------------

_MAX_SEQ = text("SELECT coalesce(max(seq), 0) FROM events")

_UPSERT_SETTINGS = text(
    """
    INSERT INTO partner_webhook_endpoints (id, url, source, status, fanout_seq, secrets)
    SELECT u.id, u.url, 'settings', 'ENABLED', (SELECT coalesce(max(seq), 0) FROM events), '{}'
    FROM unnest(CAST(:ids AS uuid[]), CAST(:urls AS text[])) AS u(id, url)
    ON CONFLICT (id) DO UPDATE
    SET status = 'ENABLED', disabled_reason = NULL, disabled_at = NULL, updated_at = :now
    WHERE partner_webhook_endpoints.disabled_reason = 'removed_from_settings'
    """
)
_RETIRE_SETTINGS = text(
    """
    UPDATE partner_webhook_endpoints
    SET status = 'DISABLED', disabled_reason = 'removed_from_settings', disabled_at = :now,
        updated_at = :now
    WHERE source = 'settings' AND status = 'ENABLED' AND id <> ALL(CAST(:ids AS uuid[]))
    """
)


async def sync_settings_endpoints(
    session: AsyncSession,
    endpoints: Sequence[tuple[uuid.UUID, str]],
    now: datetime,
    *,
    retire: bool = True,
) -> None:
    """Settings endpoints as rows: new ones start after the newest event (history is what
    `GET /v1/events` is for); with `retire`, one no longer in the settings is disabled, and
    enabled again (where it stopped) if it comes back."""
    ids = [e[0] for e in endpoints]
    if endpoints:
        await session.execute(
            _UPSERT_SETTINGS, {"ids": ids, "urls": [e[1] for e in endpoints], "now": now}
        )
    if retire:
        await session.execute(_RETIRE_SETTINGS, {"ids": ids, "now": now})


async def add_endpoint(
    session: AsyncSession,
    *,
    endpoint_id: uuid.UUID,
    url: str,
    description: str | None,
    event_types: list[str] | None,
    secrets: list[str],
) -> WebhookEndpoint:
    max_seq = (await session.execute(_MAX_SEQ)).scalar_one()
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        url=url,
        source=EndpointSource.ADMIN,
        description=description,
        event_types=event_types,
        secrets=secrets,
        status=EndpointStatus.ENABLED,
        fanout_seq=max_seq,
    )
    session.add(endpoint)
    await session.flush()
    await session.refresh(endpoint)
    return endpoint


_OWN_SECRETS = text(
    """
    SELECT id, secrets FROM partner_webhook_endpoints
    WHERE source = 'admin' AND cardinality(secrets) > 0
    ORDER BY id
    FOR NO KEY UPDATE
    """
)
_SET_SECRETS = text(
    "UPDATE partner_webhook_endpoints SET secrets = :secrets, updated_at = now() WHERE id = :id"
)


async def lock_own_secrets(session: AsyncSession) -> list[tuple[uuid.UUID, list[str]]]:
    """Every admin endpoint with secrets of its own, locked, with what is stored."""
    rows = (await session.execute(_OWN_SECRETS)).all()
    return [(r.id, list(r.secrets)) for r in rows]


async def set_secrets(session: AsyncSession, endpoint_id: uuid.UUID, secrets: list[str]) -> None:
    await session.execute(_SET_SECRETS, {"id": endpoint_id, "secrets": secrets})


async def get_endpoint(
    session: AsyncSession, endpoint_id: uuid.UUID, *, lock: bool = False
) -> WebhookEndpoint | None:
    if lock:
        found = await session.execute(
            text("SELECT id FROM partner_webhook_endpoints WHERE id = :id FOR NO KEY UPDATE"),
            {"id": endpoint_id},
        )
        if found.first() is None:
            return None
    return await session.get(WebhookEndpoint, endpoint_id, populate_existing=True)


async def list_endpoints(session: AsyncSession) -> list[WebhookEndpoint]:
    statement = select(WebhookEndpoint).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    return list((await session.scalars(statement)).all())


@dataclass(frozen=True, slots=True)
class EndpointTarget:
    """What the dispatcher needs of an endpoint to send to it."""

    id: uuid.UUID
    url: str
    source: str
    secrets: tuple[str, ...]


_ENABLED_TARGETS = text(
    "SELECT id, url, source, secrets FROM partner_webhook_endpoints WHERE status = 'ENABLED'"
)


async def enabled_targets(session: AsyncSession) -> dict[uuid.UUID, EndpointTarget]:
    rows = (await session.execute(_ENABLED_TARGETS)).all()
    return {r.id: EndpointTarget(r.id, r.url, r.source, tuple(r.secrets or ())) for r in rows}


_WAKE_LANES = text(
    """
    UPDATE partner_webhook_lanes SET next_attempt_at = :now
    WHERE endpoint_id = :id AND next_attempt_at IS NOT NULL
    """
)


async def wake_lanes(session: AsyncSession, endpoint_id: uuid.UUID, now: datetime) -> None:
    """An endpoint enabled again is tried at once, not after its lanes' last backoff."""
    await session.execute(_WAKE_LANES, {"id": endpoint_id, "now": now})


def disable(endpoint: WebhookEndpoint, reason: DisabledReason, now: datetime) -> None:
    endpoint.status = EndpointStatus.DISABLED
    endpoint.disabled_reason = reason
    endpoint.disabled_at = now
    endpoint.updated_at = now


# --- fan-out: events into delivery rows ---------------------------------------------------------

_FAN_OUT = text(
    """
    WITH eps AS (
        SELECT id, fanout_seq, event_types FROM partner_webhook_endpoints
        WHERE status = 'ENABLED'
        ORDER BY id
        FOR NO KEY UPDATE SKIP LOCKED
    ),
    picked AS (
        SELECT eps.id AS endpoint_id, eps.event_types, ev.local_id, ev.seq, ev.party_ref, ev.type
        FROM eps CROSS JOIN LATERAL (
            SELECT local_id, seq, party_ref, type FROM events
            WHERE seq > eps.fanout_seq ORDER BY seq LIMIT :limit
        ) AS ev
    ),
    added AS (
        INSERT INTO partner_webhook_deliveries
            (endpoint_id, event_local_id, seq, party_ref, state, attempts, created_at)
        SELECT endpoint_id, local_id, seq, party_ref, 'PENDING', 0, :now FROM picked
        WHERE event_types IS NULL OR type = ANY(event_types)
        ORDER BY endpoint_id, seq
        ON CONFLICT (endpoint_id, event_local_id) DO NOTHING
        RETURNING endpoint_id, party_ref
    ),
    lanes AS (
        INSERT INTO partner_webhook_lanes (endpoint_id, party_ref, next_attempt_at, failures)
        SELECT DISTINCT endpoint_id, party_ref, CAST(:now AS timestamptz), 0 FROM added
        ORDER BY endpoint_id, party_ref
        ON CONFLICT (endpoint_id, party_ref) DO UPDATE
        -- An idle lane becomes due; one that is leased or backing off keeps its time.
        SET next_attempt_at = coalesce(
            partner_webhook_lanes.next_attempt_at, EXCLUDED.next_attempt_at
        )
        RETURNING 1
    ),
    moved AS (
        UPDATE partner_webhook_endpoints AS e SET fanout_seq = m.top
        FROM (SELECT endpoint_id, max(seq) AS top FROM picked GROUP BY endpoint_id) AS m
        WHERE e.id = m.endpoint_id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM picked) AS picked, (SELECT count(*) FROM added) AS added,
           (SELECT count(*) FROM lanes) AS lanes, (SELECT count(*) FROM moved) AS moved
    """
)


@dataclass(frozen=True, slots=True)
class FanOut:
    picked: int  # events read past some endpoint's fan-out position
    added: int  # delivery rows written


async def fan_out(session: AsyncSession, now: datetime, limit: int) -> FanOut:
    """Turn up to `limit` numbered events past each enabled endpoint's position into delivery
    rows (those its filter takes) and make their lanes due. Readers only ever see numbered rows,
    and numbers are given after commit in order, so advancing past seq N never skips a row."""
    row = (await session.execute(_FAN_OUT, {"now": now, "limit": limit})).one()
    return FanOut(int(row.picked), int(row.added))


# --- claims -------------------------------------------------------------------------------------

_CLAIM = text(
    """
    WITH due AS (
        SELECT l.endpoint_id, l.party_ref FROM partner_webhook_lanes AS l
        JOIN partner_webhook_endpoints AS e ON e.id = l.endpoint_id AND e.status = 'ENABLED'
        WHERE l.next_attempt_at <= :now
        ORDER BY l.next_attempt_at
        LIMIT :limit
        FOR UPDATE OF l SKIP LOCKED
    )
    UPDATE partner_webhook_lanes AS l
    SET next_attempt_at = :lease_until, claim_token = :token, claim_holder = :holder
    FROM due WHERE l.endpoint_id = due.endpoint_id AND l.party_ref = due.party_ref
    RETURNING l.endpoint_id, l.party_ref, l.failures, l.failing_since
    """
)

_LANE_HEADS = text(
    """
    SELECT d.id, d.endpoint_id, d.party_ref, d.seq, d.attempts,
           ev.id AS event_id, ev.type, ev.version, ev.created_at, ev.party_ref AS event_party,
           ev.data
    FROM unnest(CAST(:eps AS uuid[]), CAST(:parties AS text[])) AS c(endpoint_id, party_ref)
    CROSS JOIN LATERAL (
        SELECT id, endpoint_id, party_ref, seq, attempts, event_local_id
        FROM partner_webhook_deliveries AS d
        WHERE d.endpoint_id = c.endpoint_id AND d.party_ref = c.party_ref AND d.state = 'PENDING'
        ORDER BY d.seq
        LIMIT :per_lane
    ) AS d
    JOIN events AS ev ON ev.local_id = d.event_local_id
    ORDER BY d.endpoint_id, d.party_ref, d.seq
    """
)


# A claim whose holder stopped renewing its heartbeat (app/processes: killed, or cut off from the
# database) is over: its lanes are due now instead of when the lease ends. The same belief as
# the idempotency claims' (processes.repository.holder_gone): a holder with no row is not judged
# gone. Believing a live but stalled holder gone costs a second send of what it had in flight
# (at least once); its late outcome is recorded without touching the new claim's schedule
# (the claim token differs).
_RECLAIM = text(
    """
    UPDATE partner_webhook_lanes AS l SET next_attempt_at = :now
    FROM service_processes AS p
    WHERE l.claim_token IS NOT NULL AND l.claim_holder = p.id
      AND p.heartbeat_at < clock_timestamp() - CAST(:stale_after AS interval)
      AND l.next_attempt_at > :now
    """
)


async def reclaim_from_gone_holders(
    session: AsyncSession, *, now: datetime, stale_after: timedelta
) -> int:
    """Make the lanes of claims whose holder is gone due at `now`; how many."""
    result = await session.execute(_RECLAIM, {"now": now, "stale_after": stale_after})
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    id: int
    seq: int
    attempts: int
    event_id: str
    event: dict[str, Any]  # the public event JSON, as sent


@dataclass(slots=True)
class ClaimedLane:
    endpoint_id: uuid.UUID
    party_ref: str
    failures: int
    failing_since: datetime | None
    token: uuid.UUID
    deliveries: list[PendingDelivery]


async def claim_lanes(
    session: AsyncSession,
    *,
    now: datetime,
    lease_until: datetime,
    limit: int,
    per_lane: int,
    holder: uuid.UUID | None = None,
) -> list[ClaimedLane]:
    """Claim up to `limit` due lanes of enabled endpoints (SKIP LOCKED: replicas share the work)
    and read each one's first `per_lane` pending events in seq order. The lease keeps every
    other worker off the lane, so a party's events never go out twice at once or out of order."""
    token = uuid.uuid4()
    claimed = (
        await session.execute(
            _CLAIM,
            {
                "now": now,
                "lease_until": lease_until,
                "limit": limit,
                "token": token,
                "holder": holder,
            },
        )
    ).all()
    if not claimed:
        return []
    lanes = {
        (r.endpoint_id, r.party_ref): ClaimedLane(
            r.endpoint_id, r.party_ref, r.failures, r.failing_since, token, []
        )
        for r in claimed
    }
    rows = await session.execute(
        _LANE_HEADS,
        {
            "eps": [key[0] for key in lanes],
            "parties": [key[1] for key in lanes],
            "per_lane": per_lane,
        },
    )
    for r in rows:
        lanes[(r.endpoint_id, r.party_ref)].deliveries.append(
            PendingDelivery(
                r.id,
                r.seq,
                r.attempts,
                r.event_id,
                # The events package's own renderer: a delivery's body is the same JSON as the
                # event in a catch-up page or the stream.
                event_json(
                    StoredEvent(
                        r.seq, r.event_id, r.type, r.version, r.created_at, r.event_party, r.data
                    )
                ),
            )
        )
    return list(lanes.values())


# --- recording outcomes -------------------------------------------------------------------------

_LOCK_ENDPOINTS = text(
    "SELECT id, status, failing_since FROM partner_webhook_endpoints "
    "WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE"
)
_ENDPOINTS_OK = text(
    """
    UPDATE partner_webhook_endpoints SET failing_since = NULL, last_success_at = :now
    WHERE id = ANY(CAST(:ids AS uuid[]))
      AND (failing_since IS NOT NULL OR last_success_at IS NULL
           OR last_success_at < CAST(:now AS timestamptz) - interval '10 seconds')
    """
)
_ENDPOINTS_FAILED = text(
    """
    UPDATE partner_webhook_endpoints
    SET failing_since = coalesce(failing_since, :now), last_failure_at = :now
    WHERE id = ANY(CAST(:ids AS uuid[]))
    RETURNING id, status, failing_since
    """
)
_DISABLE = text(
    """
    UPDATE partner_webhook_endpoints
    SET status = 'DISABLED', disabled_reason = :reason, disabled_at = :now, updated_at = :now
    WHERE id = :id AND status = 'ENABLED'
    RETURNING url
    """
)
_LOCK_LANES = text(
    """
    SELECT l.endpoint_id, l.party_ref, l.failures, l.failing_since, l.claim_token
    FROM partner_webhook_lanes AS l
    JOIN unnest(CAST(:eps AS uuid[]), CAST(:parties AS text[])) AS c(endpoint_id, party_ref)
      ON l.endpoint_id = c.endpoint_id AND l.party_ref = c.party_ref
    ORDER BY l.endpoint_id, l.party_ref
    FOR UPDATE OF l
    """
)
_UPDATE_DELIVERIES = text(
    """
    UPDATE partner_webhook_deliveries AS d
    SET attempts = d.attempts + 1,
        state = CASE WHEN u.ok THEN 'DELIVERED' ELSE d.state END,
        delivered_at = CASE WHEN u.ok THEN u.at ELSE d.delivered_at END,
        last_status = u.status, last_error = u.error, last_attempt_at = u.at
    FROM unnest(
        CAST(:ids AS bigint[]), CAST(:ok AS boolean[]), CAST(:status AS integer[]),
        CAST(:error AS text[]), CAST(:at AS timestamptz[])
    ) AS u(id, ok, status, error, at)
    WHERE d.id = u.id
    """
)
_INSERT_ATTEMPTS = text(
    """
    INSERT INTO partner_webhook_attempts
        (delivery_id, endpoint_id, event_id, attempt, attempted_at, outcome, status_code,
         latency_ms, error)
    SELECT * FROM unnest(
        CAST(:delivery_ids AS bigint[]), CAST(:eps AS uuid[]), CAST(:event_ids AS text[]),
        CAST(:attempt AS integer[]), CAST(:at AS timestamptz[]), CAST(:outcome AS text[]),
        CAST(:status AS integer[]), CAST(:latency AS integer[]), CAST(:error AS text[])
    )
    """
)
# A fresh statement after the lanes are locked, so it sees every delivery row that a fan-out
# committed meanwhile: a lane is made idle (NULL) only when nothing is pending in it.
_UPDATE_LANES = text(
    """
    UPDATE partner_webhook_lanes AS l
    SET failures = CASE
            WHEN NOT u.attempted THEN l.failures WHEN u.ok THEN 0 ELSE l.failures + 1
        END,
        failing_since = CASE
            WHEN NOT u.attempted THEN l.failing_since
            WHEN u.ok THEN NULL
            ELSE coalesce(l.failing_since, u.at)
        END,
        claim_token = NULL,
        claim_holder = NULL,
        next_attempt_at = CASE
            WHEN NOT u.ok THEN u.next_at
            WHEN EXISTS (
                SELECT 1 FROM partner_webhook_deliveries AS d
                WHERE d.endpoint_id = l.endpoint_id AND d.party_ref = l.party_ref
                  AND d.state = 'PENDING'
            ) THEN u.at
            ELSE NULL
        END
    FROM unnest(
        CAST(:eps AS uuid[]), CAST(:parties AS text[]), CAST(:ok AS boolean[]),
        CAST(:next_at AS timestamptz[]), CAST(:at AS timestamptz[]),
        CAST(:attempted AS boolean[])
    ) AS u(endpoint_id, party_ref, ok, next_at, at, attempted)
    WHERE l.endpoint_id = u.endpoint_id AND l.party_ref = u.party_ref
    """
)


@dataclass(frozen=True, slots=True)
class LockedLane:
    endpoint_id: uuid.UUID
    party_ref: str
    failures: int
    failing_since: datetime | None
    claim_token: uuid.UUID | None


async def lock_endpoints(session: AsyncSession, ids: Sequence[uuid.UUID]) -> None:
    if ids:
        await session.execute(_LOCK_ENDPOINTS, {"ids": sorted(ids)})


async def endpoints_succeeded(
    session: AsyncSession, ids: Sequence[uuid.UUID], now: datetime
) -> None:
    if ids:
        await session.execute(_ENDPOINTS_OK, {"ids": list(ids), "now": now})


async def endpoints_failed(
    session: AsyncSession, ids: Sequence[uuid.UUID], now: datetime
) -> list[tuple[uuid.UUID, str, datetime]]:
    if not ids:
        return []
    rows = await session.execute(_ENDPOINTS_FAILED, {"ids": list(ids), "now": now})
    return [(r.id, r.status, r.failing_since) for r in rows]


async def disable_endpoint(
    session: AsyncSession, endpoint_id: uuid.UUID, reason: DisabledReason, now: datetime
) -> str | None:
    """Disable if enabled; the endpoint's URL when this call disabled it, else None."""
    row = (
        await session.execute(_DISABLE, {"id": endpoint_id, "reason": reason, "now": now})
    ).first()
    return None if row is None else str(row.url)


async def lock_lanes(
    session: AsyncSession, keys: Sequence[tuple[uuid.UUID, str]]
) -> dict[tuple[uuid.UUID, str], LockedLane]:
    if not keys:
        return {}
    rows = await session.execute(
        _LOCK_LANES, {"eps": [k[0] for k in keys], "parties": [k[1] for k in keys]}
    )
    return {
        (r.endpoint_id, r.party_ref): LockedLane(
            r.endpoint_id, r.party_ref, r.failures, r.failing_since, r.claim_token
        )
        for r in rows
    }


@dataclass(frozen=True, slots=True)
class AttemptRow:
    delivery_id: int
    endpoint_id: uuid.UUID
    event_id: str
    attempt: int
    at: datetime
    outcome: str
    delivered: bool
    status: int | None
    latency_ms: int
    error: str | None


async def record_attempts(session: AsyncSession, attempts: Sequence[AttemptRow]) -> None:
    if not attempts:
        return
    await session.execute(
        _UPDATE_DELIVERIES,
        {
            "ids": [a.delivery_id for a in attempts],
            "ok": [a.delivered for a in attempts],
            "status": [a.status for a in attempts],
            "error": [a.error for a in attempts],
            "at": [a.at for a in attempts],
        },
    )
    await session.execute(
        _INSERT_ATTEMPTS,
        {
            "delivery_ids": [a.delivery_id for a in attempts],
            "eps": [a.endpoint_id for a in attempts],
            "event_ids": [a.event_id for a in attempts],
            "attempt": [a.attempt for a in attempts],
            "at": [a.at for a in attempts],
            "outcome": [a.outcome for a in attempts],
            "status": [a.status for a in attempts],
            "latency": [a.latency_ms for a in attempts],
            "error": [a.error for a in attempts],
        },
    )


@dataclass(frozen=True, slots=True)
class LaneUpdate:
    endpoint_id: uuid.UUID
    party_ref: str
    ok: bool
    next_at: datetime | None  # when a failed lane is tried again
    at: datetime
    # False when the claim sent nothing (endpoint disabled meanwhile, lease nearly out): the
    # lane's failure count and streak stay as they were.
    attempted: bool = True


async def update_lanes(session: AsyncSession, updates: Sequence[LaneUpdate]) -> None:
    if not updates:
        return
    await session.execute(
        _UPDATE_LANES,
        {
            "eps": [u.endpoint_id for u in updates],
            "parties": [u.party_ref for u in updates],
            "ok": [u.ok for u in updates],
            "next_at": [u.next_at for u in updates],
            "at": [u.at for u in updates],
            "attempted": [u.attempted for u in updates],
        },
    )


# --- redelivery ---------------------------------------------------------------------------------

_REDELIVER = text(
    """
    WITH chosen AS (
        SELECT ev.local_id, ev.seq, ev.party_ref FROM events AS ev
        WHERE ev.seq IS NOT NULL
          AND (CAST(:event_id AS text) IS NULL OR ev.id = :event_id)
          AND (CAST(:since AS timestamptz) IS NULL OR ev.created_at >= :since)
          AND (CAST(:until AS timestamptz) IS NULL OR ev.created_at < :until)
          AND (CAST(:types AS text[]) IS NULL OR ev.type = ANY(CAST(:types AS text[])))
        ORDER BY ev.seq
        LIMIT :limit
    ),
    upserted AS (
        INSERT INTO partner_webhook_deliveries
            (endpoint_id, event_local_id, seq, party_ref, state, attempts, created_at)
        SELECT :endpoint_id, local_id, seq, party_ref, 'PENDING', 0, :now FROM chosen
        ON CONFLICT (endpoint_id, event_local_id) DO UPDATE
        SET state = 'PENDING', delivered_at = NULL
        RETURNING party_ref
    ),
    lanes AS (
        INSERT INTO partner_webhook_lanes (endpoint_id, party_ref, next_attempt_at, failures)
        SELECT DISTINCT CAST(:endpoint_id AS uuid), party_ref, CAST(:now AS timestamptz), 0
        FROM upserted
        ORDER BY 2
        ON CONFLICT (endpoint_id, party_ref) DO UPDATE
        SET next_attempt_at = coalesce(
            partner_webhook_lanes.next_attempt_at, EXCLUDED.next_attempt_at
        )
        RETURNING 1
    )
    SELECT count(*) AS n FROM upserted
    """
)
_COUNT_RANGE = text(
    """
    SELECT count(*) FROM events AS ev
    WHERE ev.seq IS NOT NULL AND ev.created_at >= :since AND ev.created_at < :until
      AND (CAST(:types AS text[]) IS NULL OR ev.type = ANY(CAST(:types AS text[])))
    """
)
_EVENT_BY_ID = text("SELECT type, seq FROM events WHERE id = :id")


async def event_type_of(session: AsyncSession, event_id: str) -> tuple[str, int | None] | None:
    row = (await session.execute(_EVENT_BY_ID, {"id": event_id})).first()
    return None if row is None else (str(row.type), row.seq)


async def count_range(
    session: AsyncSession, since: datetime, until: datetime, types: list[str] | None
) -> int:
    found = await session.execute(_COUNT_RANGE, {"since": since, "until": until, "types": types})
    return int(found.scalar_one())


async def redeliver(
    session: AsyncSession,
    endpoint_id: uuid.UUID,
    *,
    now: datetime,
    event_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    types: list[str] | None,
    limit: int,
) -> int:
    """Set the chosen events' deliveries to this endpoint back to PENDING (or write them), in
    their lanes' seq order; the caller holds the endpoint's row lock."""
    found = await session.execute(
        _REDELIVER,
        {
            "endpoint_id": endpoint_id,
            "now": now,
            "event_id": event_id,
            "since": since,
            "until": until,
            "types": types,
            "limit": limit,
        },
    )
    return int(found.scalar_one())


# --- the delivery log ---------------------------------------------------------------------------

_ATTEMPTS_PAGE = text(
    """
    SELECT a.id, a.event_id, a.attempt, a.attempted_at, a.outcome, a.status_code,
           a.latency_ms, a.error, d.party_ref, d.state
    FROM partner_webhook_attempts AS a
    JOIN partner_webhook_deliveries AS d ON d.id = a.delivery_id
    WHERE a.endpoint_id = :endpoint_id
      AND (CAST(:before AS bigint) IS NULL OR a.id < :before)
      AND (CAST(:event_id AS text) IS NULL OR a.event_id = :event_id)
    ORDER BY a.id DESC
    LIMIT :limit
    """
)


async def attempts_page(
    session: AsyncSession,
    endpoint_id: uuid.UUID,
    *,
    before: int | None,
    event_id: str | None,
    limit: int,
) -> list[Any]:
    rows = await session.execute(
        _ATTEMPTS_PAGE,
        {"endpoint_id": endpoint_id, "before": before, "event_id": event_id, "limit": limit},
    )
    return list(rows.all())


_DELIVERY_COUNTS = text(
    """
    SELECT state, count(*) AS n, min(created_at) AS oldest FROM partner_webhook_deliveries
    WHERE endpoint_id = :endpoint_id GROUP BY state
    """
)


async def delivery_counts(
    session: AsyncSession, endpoint_id: uuid.UUID
) -> dict[str, tuple[int, datetime | None]]:
    rows = await session.execute(_DELIVERY_COUNTS, {"endpoint_id": endpoint_id})
    return {r.state: (int(r.n), r.oldest) for r in rows}


# --- gauges and retention -----------------------------------------------------------------------

_STATS = text(
    """
    SELECT m.top - coalesce(
               (SELECT min(fanout_seq) FROM partner_webhook_endpoints WHERE status = 'ENABLED'),
               m.top
           ) AS fanout_lag,
           (SELECT count(*) FROM partner_webhook_deliveries AS d
            JOIN partner_webhook_endpoints AS e ON e.id = d.endpoint_id AND e.status = 'ENABLED'
            WHERE d.state = 'PENDING') AS pending,
           (SELECT min(d.created_at) FROM partner_webhook_deliveries AS d
            JOIN partner_webhook_endpoints AS e ON e.id = d.endpoint_id AND e.status = 'ENABLED'
            WHERE d.state = 'PENDING') AS oldest_pending
    FROM (SELECT coalesce(max(seq), 0) AS top FROM events) AS m
    """
)


async def stats(session: AsyncSession) -> tuple[int, int, datetime | None]:
    row = (await session.execute(_STATS)).one()
    return int(row.fanout_lag), int(row.pending), row.oldest_pending


_DELETE_DELIVERED = text(
    """
    DELETE FROM partner_webhook_deliveries WHERE id IN (
        SELECT id FROM partner_webhook_deliveries
        WHERE state = 'DELIVERED' AND delivered_at < :cutoff
        LIMIT :limit
    )
    """
)


async def delete_delivered(session: AsyncSession, cutoff: datetime, limit: int) -> int:
    """Delivered rows past the log's retention, and their attempts (ON DELETE CASCADE)."""
    result = await session.execute(_DELETE_DELIVERED, {"cutoff": cutoff, "limit": limit})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
