"""Consumer idempotency keys, Stripe's design in Postgres.

A request claims its key before it does anything; the claim is a lease (`locked_until`). The
outcome is stored with the key and replayed to every later request with the same key and the
same request. A claim names the process holding it; a claim whose holder died (its process
stopped renewing its heartbeat, or, for a claim no process names, its lease ran out) is taken
over by the next retry, which resumes from the key's recovery point instead of starting again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, SecretStr
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core.metrics import METRICS
from app.errors import AppError, Conflict, Unprocessable
from app.idempotency import repository as repo

log = logging.getLogger("app.idempotency")

_KEY_SYNTAX = re.compile(r"^[\x20-\x7e]{8,255}$")


class IdempotencyKeyMissing(AppError):
    status_code = 400
    code = "idempotency_key_missing"
    title = "The Idempotency-Key header is required"


class IdempotencyKeyInvalid(AppError):
    status_code = 400
    code = "idempotency_key_invalid"
    title = "The Idempotency-Key header must be 8-255 printable ASCII characters"


class IdempotencyKeyReused(Unprocessable):
    code = "idempotency_key_reused"
    title = "This Idempotency-Key was used for a different request"


class IdempotencyRequestInProgress(Conflict):
    code = "idempotency_request_in_progress"
    title = "A request with this Idempotency-Key is still being processed"


def parse_key(raw: str | None) -> str:
    if raw is None or raw == "":
        raise IdempotencyKeyMissing(
            "Send an `Idempotency-Key` header (for example a UUID) with every POST and DELETE."
        )
    if not _KEY_SYNTAX.match(raw):
        raise IdempotencyKeyInvalid()
    return raw


def lease_for(settings: Settings) -> timedelta:
    """Longer than one request can take (every Bakkt attempt timing out, plus backoff), so a
    lease only runs out when its holder is gone."""
    attempts = settings.bakkt_transfer_max_attempts
    per_attempt = (
        settings.bakkt_connect_timeout
        + settings.bakkt_read_timeout
        + settings.bakkt_pool_timeout
        + settings.bakkt_retry_backoff_cap
    )
    return timedelta(seconds=max(30.0, attempts * per_attempt + 10.0))


def _canonical(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _canonical({name: getattr(value, name) for name in type(value).model_fields})
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, SecretStr):
        # Hashed on its own so the canonical text never holds the secret.
        return {"sha256": hashlib.sha256(value.get_secret_value().encode()).hexdigest()}
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, uuid.UUID | datetime | date):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def fingerprint(method: str, path: str, payload: Any) -> str:
    """sha256 of the method, the path and the validated body in canonical JSON, so "10" and
    "10.00", or the same fields in another order, are the same request."""
    body = json.dumps(_canonical(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{method.upper()}\n{path}\n{body}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Holder:
    """Who claims: this process (None: no registered process, the lease alone decides) and how
    long a silent holder is still believed alive."""

    process_id: uuid.UUID | None
    stale_after: timedelta


NO_HOLDER = Holder(None, timedelta(seconds=6))


def holder_for(settings: Settings, process_id: uuid.UUID | None) -> Holder:
    return Holder(process_id, timedelta(seconds=settings.process_stale_after))


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    party_ref: str
    key: str
    method: str
    path: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """We hold the key. `recovery_point` and `transaction_id` say how far an earlier holder got."""

    key_id: int
    # With key_id, names this claim for good: an expired key that is claimed again gets a new
    # created_at, so what was derived from the old claim is not mistaken for the new one's.
    created_at: datetime
    recovery_point: str
    transaction_id: uuid.UUID | None
    resumed: bool

    @property
    def intent_written(self) -> bool:
        return self.recovery_point == repo.INTENT_WRITTEN


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    body: Any


async def claim(
    session: AsyncSession,
    req: IdempotentRequest,
    *,
    lease: timedelta,
    ttl: timedelta,
    holder: Holder = NO_HOLDER,
) -> KeyClaim | Replay:
    """Claim the key (committed at once, so duplicates see it) or say what to answer instead.
    A new key costs one statement; the holder's heartbeat is read only when the key exists."""
    for _ in range(3):
        row = await repo.claim_new(
            session,
            party_ref=req.party_ref,
            key=req.key,
            method=req.method,
            path=req.path,
            fingerprint=req.fingerprint,
            lease=lease,
            ttl=ttl,
            holder_id=holder.process_id,
        )
        if row is not None:
            await session.commit()
            return KeyClaim(row.id, row.created_at, row.recovery_point, None, resumed=False)
        found = await repo.get_with_now(
            session, req.party_ref, req.key, stale_after=holder.stale_after
        )
        if found is None:
            # The holder released it (its request failed before writing anything): claim anew.
            await session.rollback()
            continue
        existing, now, holder_gone = found
        # Read before the rollback below, which expires the row.
        same_request = existing.fingerprint == req.fingerprint
        finished = existing.recovery_point == repo.FINISHED and existing.response_status is not None
        stored = Replay(existing.response_status or 0, existing.response_body)
        leased = (
            existing.locked_until is not None and existing.locked_until > now and not holder_gone
        )
        key_id = existing.id
        if not same_request:
            await session.rollback()
            METRICS.idempotency_rejections.labels(IdempotencyKeyReused.code).inc()
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used with a different method, path or body. "
                "Use a new key for a new request."
            )
        if finished:
            await session.rollback()
            METRICS.idempotency_replays.inc()
            return stored
        if leased:
            await session.rollback()
            METRICS.idempotency_rejections.labels(IdempotencyRequestInProgress.code).inc()
            raise IdempotencyRequestInProgress(
                "The first request with this key has not finished yet; retry shortly.",
                retry_after=1,
            )
        taken = await repo.take_over(
            session, key_id, lease, holder_id=holder.process_id, stale_after=holder.stale_after
        )
        if taken is not None:
            await session.commit()
            if holder_gone:
                log.warning("idempotency claim %s taken over from a process that is gone", key_id)
            return KeyClaim(
                taken.id,
                taken.created_at,
                taken.recovery_point,
                taken.transaction_id,
                resumed=True,
            )
        await session.rollback()
    METRICS.idempotency_rejections.labels(IdempotencyRequestInProgress.code).inc()
    raise IdempotencyRequestInProgress(
        "The request with this key is changing hands; retry shortly.",
        retry_after=1,
    )


async def record_intent(
    session: AsyncSession, claim_: KeyClaim, transaction_id: uuid.UUID | None
) -> None:
    """Part of the caller's transaction: commits together with the intent it points at. Raises
    when another holder of the claim wrote its intent first (a holder believed gone that was
    not): the caller's transaction must roll back, and the consumer's retry resumes that one."""
    if not await repo.set_intent(session, claim_.key_id, transaction_id):
        METRICS.idempotency_rejections.labels(IdempotencyRequestInProgress.code).inc()
        raise IdempotencyRequestInProgress(
            "Another attempt of this request got there first; retry shortly.", retry_after=1
        )


async def finish(
    session: AsyncSession, claim_: KeyClaim, status: int, body: Any
) -> tuple[int, Any]:
    """Store the response (in the caller's transaction). Returns what the key now answers: ours,
    or the first one if another holder finished before us."""
    if await repo.finish(session, claim_.key_id, status, body):
        return status, body
    earlier = await repo.stored_response(session, claim_.key_id)
    return earlier if earlier is not None else (status, body)


async def forget(session: AsyncSession, claim_: KeyClaim) -> None:
    """Drop an unfinished claim, in the caller's transaction: nothing will be replayed for it."""
    await repo.delete_unfinished(session, claim_.key_id)


async def release(session: AsyncSession, claim_: KeyClaim) -> None:
    """Forget an unfinished claim whose request failed before anything happened, so the caller
    may fix the request and retry with the same key. A claim that has its intent by now (written
    by another holder of it) is kept: that request did happen."""
    await session.rollback()
    await repo.delete_started(session, claim_.key_id)
    await session.commit()


async def release_quietly(session: AsyncSession, claim_: KeyClaim) -> None:
    """`release` after an unexpected failure; if even that fails, the lease runs out instead."""
    try:
        await release(session, claim_)
    except Exception as exc:
        log.warning("could not release idempotency claim %s: %s", claim_.key_id, type(exc).__name__)


async def end_lease_quietly(session: AsyncSession, claim_: KeyClaim) -> None:
    """After an unexpected failure past the intent: the intent stands, and the consumer's retry
    may resume it at once instead of getting 409 until the lease runs out."""
    try:
        await session.rollback()
        await repo.end_lease(session, claim_.key_id)
        await session.commit()
    except Exception as exc:
        log.warning("could not end idempotency lease %s: %s", claim_.key_id, type(exc).__name__)
