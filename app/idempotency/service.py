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
from app.db import outside_transaction
from app.errors import AppError, Conflict, Unprocessable
from app.idempotency import repository as repo
from app.idempotency.answers import Answer, InProgress, Replayed, legacy_status, stored

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
class ClaimTerms:
    """How this process claims keys: the lease, how long a key is kept, and who holds it."""

    lease: timedelta
    ttl: timedelta
    holder: Holder


def terms_for(settings: Settings, process_id: uuid.UUID | None) -> ClaimTerms:
    return ClaimTerms(
        lease=lease_for(settings),
        ttl=timedelta(days=settings.idempotency_ttl_days),
        # Claims name this process, so a retry after it dies need not wait out the lease.
        holder=holder_for(settings, process_id),
    )


class ClaimTaken(Exception):
    """Another holder of the claim wrote its intent first (a holder believed gone that was
    not): the caller's transaction must roll back and the request answers `in_progress`."""

    def __init__(self) -> None:
        super().__init__("the claim's intent was written by another holder")
        self.in_progress = InProgress(
            retry_after=1, detail="Another attempt of this request got there first; retry shortly."
        )


async def claim(
    session: AsyncSession, req: IdempotentRequest, terms: ClaimTerms
) -> KeyClaim | Replayed | InProgress:
    """Claim the key (committed at once, so duplicates see it) or say what to answer instead.

    One statement, in a transaction of its own (no BEGIN, no COMMIT): it claims a new key, or
    reads the row that holds it. Only a claim to be taken over costs a second one."""
    lease, holder = terms.lease, terms.holder
    for _ in range(3):
        await outside_transaction(session)
        found = await repo.claim_or_read(
            session,
            party_ref=req.party_ref,
            key=req.key,
            method=req.method,
            path=req.path,
            fingerprint=req.fingerprint,
            lease=lease,
            ttl=terms.ttl,
            holder_id=holder.process_id,
            stale_after=holder.stale_after,
        )
        await session.commit()
        if isinstance(found, repo.NewKey):
            return KeyClaim(found.id, found.created_at, found.recovery_point, None, resumed=False)
        if found is None:
            # Taken or released between the insert and the read (a concurrent claim, or a holder
            # whose request failed before writing anything): look again.
            continue
        if found.fingerprint != req.fingerprint:
            METRICS.idempotency_rejections.labels(IdempotencyKeyReused.code).inc()
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used with a different method, path or body. "
                "Use a new key for a new request."
            )
        if found.recovery_point == repo.FINISHED:
            answer = stored(found.response_kind, found.response_status, found.response_body)
            if answer is not None:
                METRICS.idempotency_replays.inc()
                return Replayed(answer)
        leased = (
            found.locked_until is not None
            and found.locked_until > found.now
            and not found.holder_gone
        )
        if leased:
            METRICS.idempotency_rejections.labels(IdempotencyRequestInProgress.code).inc()
            return InProgress(
                retry_after=1,
                detail="The first request with this key has not finished yet; retry shortly.",
            )
        await outside_transaction(session)
        taken = await repo.take_over(
            session, found.id, lease, holder_id=holder.process_id, stale_after=holder.stale_after
        )
        await session.commit()
        if taken is not None:
            if found.holder_gone:
                log.warning("idempotency claim %s taken over from a process that is gone", found.id)
            return KeyClaim(
                taken.id,
                taken.created_at,
                taken.recovery_point,
                taken.transaction_id,
                resumed=True,
            )
    METRICS.idempotency_rejections.labels(IdempotencyRequestInProgress.code).inc()
    return InProgress(
        retry_after=1, detail="The request with this key is changing hands; retry shortly."
    )


async def record_intent(
    session: AsyncSession, claim_: KeyClaim, transaction_id: uuid.UUID | None
) -> None:
    """Part of the caller's transaction: commits together with the intent it points at. Raises
    `ClaimTaken` when another holder of the claim wrote its intent first: the caller's
    transaction must roll back, and the consumer's retry resumes that one."""
    if not await repo.set_intent(session, claim_.key_id, transaction_id):
        METRICS.idempotency_rejections.labels(IdempotencyRequestInProgress.code).inc()
        raise ClaimTaken()


async def finish(session: AsyncSession, claim_: KeyClaim, answer: Answer) -> Answer:
    """Store the answer (in the caller's transaction). Returns what the key now answers: ours,
    or the first one if another holder finished before us."""
    finished = await repo.finish(
        session, claim_.key_id, answer.kind, answer.body, legacy_status=legacy_status(answer)
    )
    return await answer_after_finish(session, claim_, answer, finished=finished)


def finish_params(claim_: KeyClaim, answer: Answer) -> dict[str, Any]:
    """The parameters of `repository.FINISH_CLAIM`, for a statement that stores the answer
    together with the change it answers for; then `answer_after_finish` says what the key
    answers."""
    return repo.finish_params(
        claim_.key_id, answer.kind, answer.body, legacy_status=legacy_status(answer)
    )


async def answer_after_finish(
    session: AsyncSession, claim_: KeyClaim, answer: Answer, *, finished: bool
) -> Answer:
    """What the key answers once `answer` was offered: ours when it was stored (`finished`),
    else the first one another holder stored."""
    if finished:
        return answer
    earlier = await repo.stored_answer(session, claim_.key_id)
    if earlier is None:
        return answer
    return stored(*earlier) or answer


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
