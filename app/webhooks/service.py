"""Bakkt's webhooks, stored once and applied exactly once, whatever order they arrive in.

Two short database transactions per delivery: the intake commits the event (so the answer can be
2xx even if applying it fails), then the apply claims the stored event under a row lock, moves
what it concerns, and commits. An event the apply could not finish stays claimable and is picked
up again by `rematch_parked`, which the recovery worker runs on a schedule.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.alerts.service import AlertSpec, add_alert, add_alert_once
from app.bakkt.types import LinkStatus
from app.bakkt.types import PartyStatus as BakktPartyStatus
from app.bakkt.webhooks import (
    BankLinkEvent,
    FiatEvent,
    MalformedWebhook,
    PartyEvent,
    parse_webhook,
    webhook_type,
)
from app.bakkt.webhooks import WebhookEvent as ParsedEvent
from app.core.backoff import backoff
from app.core.clock import utcnow
from app.core.text import clip
from app.errors import is_database_unavailable
from app.events import service as events
from app.funding import bakkt_sync
from app.funding import repository as funding_repo
from app.funding.bakkt_sync import ACCOUNT_UNUSABLE_CODES, Verdict
from app.funding.models import (
    BankAccount,
    BankAccountStatus,
    HistorySource,
    LinkMethod,
    Party,
    PartyStatus,
)
from app.funding.party_status import REASONS
from app.funding.repository import OPERATOR_DISABLED
from app.webhooks import repository as repo
from app.webhooks.models import EventStatus, WebhookEvent
from app.webhooks.verify import VerifiedWebhook

logger = logging.getLogger("app.webhooks")

# An event still RECEIVED this long after it was stored lost its inline apply (the process died
# between the two commits, or the apply failed); rematch_parked takes it from there.
STRANDED_AFTER = timedelta(seconds=30)
# Parked events: retried after 1, 2, 4 ... s (capped), then handed to an operator. Ten attempts
# span about ten minutes, far longer than any gap between our commit and Bakkt's first event.
RETRY_BASE = timedelta(seconds=1)
RETRY_CAP = timedelta(minutes=5)
MAX_ATTEMPTS = 10


# Two events stamped with the same instant: the more severe status wins, so the result does not
# depend on which one arrived first.
_PARTY_RANK = {
    PartyStatus.ACTIVE: 1,
    PartyStatus.UNDER_REVIEW: 2,
    PartyStatus.INACTIVE: 3,
    PartyStatus.SUSPENDED: 4,
    PartyStatus.LIQUIDATED: 5,
    PartyStatus.CLOSED: 6,
}
_LINK_RANK = {
    BankAccountStatus.PENDING: 0,
    BankAccountStatus.LINKED: 1,
    BankAccountStatus.FAILED: 2,
    BankAccountStatus.UNLINKED: 3,
    BankAccountStatus.DISABLED: 4,
    BankAccountStatus.REPLACED: 5,
}


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    subject: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventOutcome:
    status: EventStatus
    detail: str
    # Set when an operator must look: the event is flagged and an operator_alerts row written.
    alert: Alert | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    request_id: str
    duplicate: bool
    status: str


@dataclass(frozen=True, slots=True)
class _By:
    """Who applies a stored event: the receiver as it came (and `rematch_parked`), or an
    operator replaying it, whose history rows carry their name and the stored row's id."""

    actor: str | None = None
    # The history rows' event id when it is not the event's requestId: a CONFLICT row's body
    # repeats the requestId of the event stored first, whose rows may exist already.
    event_id: str | None = None

    def history_id(self, event: ParsedEvent) -> str:
        return self.event_id or event.event_id


_RECEIVER = _By()


# -- intake --------------------------------------------------------------------------------------


async def receive(session: AsyncSession, delivery: VerifiedWebhook) -> Receipt:
    """Store a verified delivery once, then apply it. Never calls Bakkt."""
    now = delivery.received_at
    try:
        event = parse_webhook(delivery.body, received_at=now)
    except MalformedWebhook as exc:
        return await _store_malformed(session, delivery, str(exc))
    if len(event.event_id) > 255:
        return await _store_malformed(session, delivery, "requestId is longer than 255 characters")
    try:
        event_pk = await _insert_received(session, delivery, event)
    except Exception as exc:
        await session.rollback()
        # An outage is not the body's fault: the delivery is refused (503) and Bakkt retries it,
        # rather than a good event being set aside as MALFORMED.
        if is_database_unavailable(exc):
            raise
        # Whatever the database refused in what we read from this body, the body itself is
        # kept: a verified webhook is always stored, so Bakkt can stop and an operator can look.
        logger.exception("storing webhook %s failed; kept as MALFORMED", event.event_id)
        return await _store_malformed(session, delivery, "its fields could not be stored")
    if event_pk is None:
        conflict = await _conflicting_redelivery(session, delivery, event.event_id)
        if conflict is not None:
            return conflict
        # A redelivery of the stored body changes nothing once the first delivery has been
        # applied: its stored status is the answer, with no claim and no second transaction.
        stored = await repo.event_status(session, event.event_id)
        if stored is not None and stored != EventStatus.RECEIVED:
            await session.rollback()
            return Receipt(event.event_id, duplicate=True, status=stored)
    await session.commit()

    # A redelivery changes nothing, except that it may finish an event whose first apply was
    # lost; the claim (SKIP LOCKED, status RECEIVED) keeps that to one worker at a time. What
    # is applied is always the stored event: a redelivery gets here only when its body is the
    # stored one (a different body was set aside above), so its parse is the stored event's.
    status = await _apply_stored(
        session,
        event.event_id,
        parsed=event,
        now=now,
        statuses=(EventStatus.RECEIVED,),
    )
    if status is None:
        status = await repo.event_status(session, event.event_id) or EventStatus.RECEIVED
        await session.rollback()
    return Receipt(event.event_id, duplicate=event_pk is None, status=status)


async def _insert_received(
    session: AsyncSession, delivery: VerifiedWebhook, event: ParsedEvent
) -> int | None:
    now = delivery.received_at
    return await repo.insert_event(
        session,
        request_id=event.event_id,
        event_type=webhook_type(event)[:64],
        party_ref=clip(event.party_ref, 255),
        transaction_ref=clip(_transaction_ref(event), 255),
        related_ref=clip(
            event.transaction.related_transaction_ref if isinstance(event, FiatEvent) else None,
            255,
        ),
        body=delivery.body,
        headers=delivery.headers,
        event_time=event.event_time,
        received_at=now,
        status=EventStatus.RECEIVED,
        outcome=None,
        needs_operator=False,
        next_attempt_at=now + STRANDED_AFTER,
    )


async def _conflicting_redelivery(
    session: AsyncSession, delivery: VerifiedWebhook, request_id: str
) -> Receipt | None:
    """A delivery under a stored requestId whose body differs from the stored one: kept under
    an id derived from both, with an alert, and never applied. None when the bodies agree (or
    retention has cleared the stored one, so there is nothing to compare against)."""
    stored = await repo.event_body(session, request_id)
    await session.rollback()
    if stored is None or _same_event(stored, delivery.body):
        return None
    digest = hashlib.sha256(request_id.encode() + b"\n" + delivery.body).hexdigest()
    conflict_id = f"conflict:{digest}"
    why = f"requestId {request_id!r} is stored with another body; this one was not applied"
    event_pk = await _set_aside(
        session,
        delivery,
        request_id=conflict_id,
        status=EventStatus.CONFLICT,
        outcome=f"conflict: {why}",
        alert=AlertSpec(
            "webhook_body_conflict",
            f"webhook {request_id}",
            f"A verified redelivery carries another body: {why}.",
            {"requestId": request_id, "conflictId": conflict_id},
        ),
    )
    if event_pk is not None:
        logger.warning("webhook %s: %s (kept as %s)", request_id, why, conflict_id)
    return Receipt(request_id, duplicate=True, status=EventStatus.CONFLICT)


async def _store_malformed(session: AsyncSession, delivery: VerifiedWebhook, why: str) -> Receipt:
    # Verified but unreadable: Bakkt retrying it would not help, an operator has to look.
    request_id = delivery.webhook_id or "sha256:" + hashlib.sha256(delivery.body).hexdigest()
    if len(request_id) > 255:
        request_id = "sha256:" + hashlib.sha256(request_id.encode()).hexdigest()
    event_pk = await _set_aside(
        session,
        delivery,
        request_id=request_id,
        status=EventStatus.MALFORMED,
        outcome=f"malformed: {why}",
        alert=AlertSpec(
            "webhook_malformed",
            f"webhook {request_id}",
            f"A verified webhook could not be read: {why}",
            {"requestId": request_id},
        ),
    )
    if event_pk is not None:
        logger.warning("webhook %s malformed: %s", request_id, why)
    if event_pk is None:
        conflict = await _conflicting_redelivery(session, delivery, request_id)
        if conflict is not None:
            return conflict
    return Receipt(request_id, duplicate=event_pk is None, status=EventStatus.MALFORMED)


async def _set_aside(
    session: AsyncSession,
    delivery: VerifiedWebhook,
    *,
    request_id: str,
    status: EventStatus,
    outcome: str,
    alert: AlertSpec,
) -> int | None:
    """Store a verified delivery that is not to be applied, for an operator, and commit; the
    alert is raised once, by the delivery that stored it. None when it was stored already."""
    event_pk = await repo.insert_event(
        session,
        request_id=request_id,
        event_type=None,
        party_ref=None,
        transaction_ref=None,
        related_ref=None,
        body=delivery.body,
        headers=delivery.headers,
        event_time=None,
        received_at=delivery.received_at,
        status=status,
        outcome=outcome,
        needs_operator=True,
        next_attempt_at=None,
    )
    if event_pk is not None:
        add_alert(session, alert)
    await session.commit()
    return event_pk


def _same_event(stored: bytes, sent: bytes) -> bool:
    """The same JSON, whatever its spacing or key order (a sender may re-serialize a
    redelivery); anything unreadable is only the same as itself, byte for byte."""
    if stored == sent:
        return True
    try:
        return bool(
            json.loads(stored, parse_float=Decimal) == json.loads(sent, parse_float=Decimal)
        )
    except (ValueError, RecursionError):
        return False


# -- applying ------------------------------------------------------------------------------------


async def _apply_stored(
    session: AsyncSession,
    request_id: str,
    *,
    parsed: ParsedEvent,
    now: datetime,
    statuses: Collection[EventStatus],
) -> str | None:
    """Claim the stored event and apply it; None when there is nothing to claim."""
    event_pk: int | None = None
    try:
        row = await repo.claim_event(session, request_id=request_id, statuses=statuses)
        if row is None:
            await session.rollback()
            return None
        event_pk = row.id
        status = await _apply_claimed(session, row, parsed=parsed, now=now)
        await session.commit()
        return status
    except Exception:
        # The event is stored: whatever went wrong here, it is retried, and Bakkt gets its 2xx.
        await session.rollback()
        if event_pk is None:
            logger.exception("could not claim webhook %s; it will be retried", request_id)
        else:
            await _note_failure(session, event_pk, request_id, now=now)
        return EventStatus.RECEIVED


async def _apply_claimed(
    session: AsyncSession,
    row: WebhookEvent,
    *,
    parsed: ParsedEvent | None,
    now: datetime,
    by: _By = _RECEIVER,
) -> str:
    event = (
        parsed
        if parsed is not None
        else parse_webhook(row.body or b"", received_at=row.received_at)
    )
    outcome = await _apply(session, event, now=now, by=by)
    if event.missing:
        outcome = await _note_missing(session, event, outcome)
    row.attempts += 1
    row.processed_at = now
    row.next_attempt_at = None
    if outcome.status is EventStatus.PARKED:
        if row.attempts >= MAX_ATTEMPTS:
            outcome = EventOutcome(
                EventStatus.UNMATCHED,
                f"still no transaction {_transaction_ref(event)!r} after {row.attempts} attempts",
                Alert(
                    "webhook_unmatched",
                    f"webhook {row.request_id}",
                    {"requestId": row.request_id, "transactionRef": _transaction_ref(event)},
                ),
            )
        else:
            row.next_attempt_at = now + _backoff(row.attempts)
    row.status = outcome.status
    row.outcome = outcome.detail
    if outcome.alert is not None:
        row.needs_operator = True
        add_alert(
            session,
            AlertSpec(
                outcome.alert.kind, outcome.alert.subject, outcome.detail, outcome.alert.data
            ),
        )
    log = logger.warning if outcome.alert else logger.info
    log("webhook %s (%s): %s, %s", row.request_id, row.event_type, outcome.status, outcome.detail)
    return outcome.status


async def _note_failure(
    session: AsyncSession, event_pk: int, request_id: str, *, now: datetime
) -> None:
    logger.exception("applying webhook %s failed; it stays stored and will be retried", request_id)
    try:
        attempts = await repo.event_attempts(session, event_pk) + 1
        give_up = attempts >= MAX_ATTEMPTS
        await repo.record_apply_failure(
            session,
            event_pk=event_pk,
            outcome=f"apply failed (attempt {attempts}); see the service log",
            next_attempt_at=now + _backoff(attempts),
            give_up=give_up,
        )
        if give_up:
            add_alert(
                session,
                AlertSpec(
                    "webhook_apply_failed",
                    f"webhook {request_id}",
                    f"Applying this webhook failed {attempts} times.",
                    {"requestId": request_id},
                ),
            )
        await session.commit()
    except Exception:
        # The event is stored and due again after STRANDED_AFTER: nothing is lost.
        await session.rollback()
        logger.exception("could not record the failure of webhook %s", request_id)


async def _note_missing(
    session: AsyncSession, event: ParsedEvent, outcome: EventOutcome
) -> EventOutcome:
    """Fields this service assumes and the event left out never block it; they are named in
    its outcome, and one open alert per webhook type says that Bakkt's shape differs from ours."""
    missing = ", ".join(event.missing)
    kind = webhook_type(event)[:64]
    await add_alert_once(
        session,
        AlertSpec(
            "webhook_fields_missing",
            f"webhook type {kind}",
            f"{kind} events come without {missing}; filled in from the event's other times.",
            {"requestId": event.event_id, "missing": list(event.missing)},
        ),
    )
    detail = f"{outcome.detail}; without {missing} (filled in)"
    return EventOutcome(outcome.status, detail, outcome.alert)


def _backoff(attempts: int) -> timedelta:
    seconds = backoff(attempts, base=RETRY_BASE.total_seconds(), cap=RETRY_CAP.total_seconds())
    return timedelta(seconds=seconds)


async def _apply(
    session: AsyncSession, event: ParsedEvent, *, now: datetime, by: _By = _RECEIVER
) -> EventOutcome:
    if isinstance(event, FiatEvent):
        return await _apply_fiat(session, event, now=now, by=by)
    if isinstance(event, PartyEvent):
        return await _apply_party(session, event, now=now)
    if isinstance(event, BankLinkEvent):
        return await _apply_link(session, event, now=now, by=by)
    return EventOutcome(
        EventStatus.IGNORED,
        f"unknown webhook type {event.webhook_type!r}: stored, not applied",
        Alert("webhook_unknown_type", f"webhook {event.event_id}", {"type": event.webhook_type}),
    )


# -- FIAT_EVENT ----------------------------------------------------------------------------------


async def _apply_fiat(
    session: AsyncSession, event: FiatEvent, *, now: datetime, by: _By = _RECEIVER
) -> EventOutcome:
    bakkt = event.transaction
    subject = f"transaction {bakkt.transaction_ref}"
    context = f"webhook {event.event_id}"
    applied = await bakkt_sync.record(
        session,
        bakkt_sync.BakktReport(
            bakkt,
            HistorySource.WEBHOOK,
            at=event.event_time,
            context=context if by.actor is None else f"{context} replayed by {by.actor}",
            event_id=by.history_id(event),
            actor=by.actor,
        ),
        now=now,
    )
    verdict = applied.verdict
    if verdict is Verdict.UNREADABLE:
        return EventOutcome(
            EventStatus.IGNORED,
            f"unknown transactionStatus {bakkt.status!r}",
            Alert("webhook_unknown_status", subject, {"status": str(bakkt.status)}),
        )
    if verdict is Verdict.NOT_FOUND:
        # Ours, and Bakkt's event outran our own commit (or it is not ours at all).
        return EventOutcome(EventStatus.PARKED, f"no transaction {bakkt.transaction_ref!r} yet")
    if verdict is Verdict.UNRECORDABLE:
        # Held, not dropped: Bakkt moved money we cannot book (negative, sub-cent, or past
        # the cents column, like 1e20); an operator books it by hand.
        return EventOutcome(
            EventStatus.HELD,
            f"held: cannot record amount {bakkt.amount} {bakkt.currency}",
            Alert("webhook_bad_amount", subject, {"requestId": event.event_id}),
        )
    alert = applied.alert
    if verdict is Verdict.HELD:
        return EventOutcome(
            EventStatus.HELD,
            f"held for review: {applied.mismatch}",
            None if alert is None else Alert(alert.kind, alert.subject, alert.data),
        )
    if verdict is Verdict.CONFLICT and alert is not None:
        # Not a late or repeated event: Bakkt and we tell different stories (typically a
        # transfer we gave up as FAILED that Bakkt did accept). The table keeps our state;
        # an operator decides.
        return EventOutcome(
            EventStatus.IGNORED, alert.detail, Alert(alert.kind, alert.subject, alert.data)
        )
    moved = verdict in (Verdict.CREATED, Verdict.MOVED)
    return EventOutcome(
        EventStatus.APPLIED if moved else EventStatus.IGNORED, "; ".join(applied.notes)
    )


# -- PARTY_EVENT ---------------------------------------------------------------------------------


async def _apply_party(session: AsyncSession, event: PartyEvent, *, now: datetime) -> EventOutcome:
    if not isinstance(event.status, BakktPartyStatus):
        return EventOutcome(
            EventStatus.IGNORED,
            f"unknown partyStatus {event.status!r}",
            Alert("webhook_unknown_status", f"party {event.party_ref}", {"status": event.status}),
        )
    status = PartyStatus(event.status.value)
    reason = clip(event.reason_code, 64)
    # Only DOCUMENT_VERIFICATION carries an upload page; any other event ends the old one.
    verification = (
        (event.verification_url, event.verification_url_expiry)
        if reason == "DOCUMENT_VERIFICATION"
        else (None, None)
    )
    # A code the guide does not list is applied all the same (the status is what gates) and
    # shown raw; an operator learns of it.
    unknown = (
        None
        if reason is None or reason in REASONS
        else Alert(
            "party_unknown_reason",
            f"party {event.party_ref}",
            {"reasonCode": reason, "requestId": event.event_id},
        )
    )
    if await funding_repo.insert_party(
        session,
        party_ref=event.party_ref,
        status=status,
        reason=reason,
        event_time=event.event_time,
        now=now,
        verification_url=verification[0],
        verification_url_expires_at=verification[1],
    ):
        created = await funding_repo.lock_party(session, event.party_ref)
        if created is None:  # pragma: no cover - inserted just now
            raise RuntimeError(f"party {event.party_ref} vanished")
        await _party_event(session, created)
        return EventOutcome(EventStatus.APPLIED, f"party recorded as {status} ({reason})", unknown)
    party = await funding_repo.lock_party(session, event.party_ref)
    if party is None:  # pragma: no cover - parties are never deleted
        raise RuntimeError(f"party {event.party_ref} vanished")
    if not _newer(event.event_time, status, party.status_event_time, party.status, _PARTY_RANK):
        return EventOutcome(
            EventStatus.IGNORED, f"stale: the party is {party.status} since a later event"
        )
    shown_before = (party.status, party.status_reason, party.verification_url)
    party.status = status
    party.status_reason = reason
    party.status_event_time = event.event_time
    party.verification_url, party.verification_url_expires_at = verification
    party.updated_at = now
    if (status, reason, verification[0]) != shown_before:
        await _party_event(session, party)
    return EventOutcome(EventStatus.APPLIED, f"party now {status} ({reason})", unknown)


async def _party_event(session: AsyncSession, party: Party) -> None:
    """`party.<status>` with the party as `GET /v1/parties/{partyRef}` shows it (which names
    its current bank account: one read, on this rare path)."""
    account = await funding_repo.linked_bank_account(session, party.party_ref)
    events.party_moved(session, party, account)


# -- BANK_ACCOUNT_LINK ---------------------------------------------------------------------------


async def _apply_link(
    session: AsyncSession, event: BankLinkEvent, *, now: datetime, by: _By = _RECEIVER
) -> EventOutcome:
    if not isinstance(event.status, LinkStatus):
        return EventOutcome(
            EventStatus.IGNORED,
            f"unknown linkStatus {event.status!r}",
            Alert("webhook_unknown_status", f"link {event.link_ref}", {"status": event.status}),
        )
    reason = clip(event.reason_code, 64)
    target = BankAccountStatus(event.status.value)
    if target is BankAccountStatus.UNLINKED and (reason or "").upper() in ACCOUNT_UNUSABLE_CODES:
        # Bakkt unlinks an account after a return that made it unusable; the same end state as
        # the return itself, whichever of the two events comes first.
        target = BankAccountStatus.DISABLED
    bank_name = clip(event.bank_name, 255)
    mask = _last4(event.account_mask)
    account_type = clip(event.account_type, 32)

    # Two links of one party may complete at once, and only one may end LINKED: their events
    # are applied one after the other, under the party's row lock (taken before the account's,
    # as a link request does).
    await funding_repo.ensure_party(session, event.party_ref, now=now)
    await funding_repo.lock_party(session, event.party_ref)
    account = await funding_repo.lock_bank_account_by_link_ref(session, event.link_ref)
    if account is None:
        newer = None
        if target is BankAccountStatus.LINKED:
            newer = await funding_repo.supersede_linked(
                session,
                party_ref=event.party_ref,
                new_link_ref=event.link_ref,
                event_time=event.event_time,
                event_id=by.history_id(event),
                now=now,
                actor=by.actor,
            )
            if newer is not None:
                target = BankAccountStatus.REPLACED
        created = await funding_repo.insert_bank_account(
            session,
            party_ref=event.party_ref,
            link_ref=event.link_ref,
            # Linked without our asking first: on Bakkt's hosted link page.
            link_method=LinkMethod.HOSTED,
            status=target,
            bank_name=bank_name,
            account_mask=mask,
            account_type=account_type,
            reason_code=reason,
            event_time=event.event_time,
            now=now,
            event_id=by.history_id(event),
            history_note=None if newer is None else f"Bakkt linked {newer.id} later",
            actor=by.actor,
        )
        if created:
            return EventOutcome(EventStatus.APPLIED, f"bank account recorded as {target}")
        account = await funding_repo.lock_bank_account_by_link_ref(session, event.link_ref)
        if account is None:  # pragma: no cover - the insert or a concurrent one made it
            raise RuntimeError(f"bank account {event.link_ref} vanished")

    if account.party_ref != event.party_ref:
        return EventOutcome(
            EventStatus.IGNORED,
            f"link {event.link_ref!r} belongs to another party",
            Alert(
                "webhook_party_mismatch",
                f"bank account {account.id}",
                {"requestId": event.event_id},
            ),
        )
    if account.status == BankAccountStatus.DISABLED and target is not BankAccountStatus.DISABLED:
        by_operator = account.reason_code == OPERATOR_DISABLED
        # An operator's disable holds against Bakkt linking the account again (only the
        # operator lifts it), not against Bakkt unlinking or failing it, which is final anyway.
        if not by_operator or target is BankAccountStatus.LINKED:
            _fill_missing(account, bank_name, mask, account_type)
            why = "an operator disabled it" if by_operator else "after an ACH return"
            return EventOutcome(EventStatus.IGNORED, f"the account stays DISABLED {why}")
    if not _newer(event.event_time, target, account.status_event_time, account.status, _LINK_RANK):
        _fill_missing(account, bank_name, mask, account_type)
        return EventOutcome(
            EventStatus.IGNORED, f"stale: the account is {account.status} since a later event"
        )
    replaced_note = None
    if target is BankAccountStatus.LINKED:
        newer = await funding_repo.supersede_linked(
            session,
            party_ref=account.party_ref,
            new_link_ref=account.link_ref,
            event_time=event.event_time,
            event_id=by.history_id(event),
            now=now,
            actor=by.actor,
        )
        if newer is not None:
            # Bakkt linked another account after this one: that one is current.
            target = BankAccountStatus.REPLACED
            replaced_note = f"linked, but bank account {newer.id} was linked later"
    funding_repo.add_bank_account_history(
        session,
        account_id=account.id,
        from_status=account.status,
        to_status=target,
        source=HistorySource.WEBHOOK if by.actor is None else HistorySource.ADMIN,
        event_id=by.history_id(event),
        reason_code=reason,
        event_time=event.event_time,
        note=replaced_note,
        actor=by.actor,
    )
    account.status = target
    account.reason_code = reason
    account.status_event_time = event.event_time
    account.bank_name = bank_name or account.bank_name
    account.account_mask = mask or account.account_mask
    account.account_type = account_type or account.account_type
    account.updated_at = now
    return EventOutcome(EventStatus.APPLIED, f"bank account now {target}")


def _fill_missing(
    account: BankAccount, bank_name: str | None, mask: str | None, account_type: str | None
) -> None:
    account.bank_name = account.bank_name or bank_name
    account.account_mask = account.account_mask or mask
    account.account_type = account.account_type or account_type


# -- recovery ------------------------------------------------------------------------------------


async def rematch_parked(
    session_factory: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    limit: int = 100,
) -> int:
    """Retry due events: PARKED ones whose transaction was unknown, and RECEIVED ones whose
    inline apply was lost. Safe to run from any number of processes at once (each event is
    claimed with FOR UPDATE SKIP LOCKED). After MAX_ATTEMPTS a still-parked event becomes
    UNMATCHED, flagged for an operator with an alert. Also links fees and adjustments to
    transfers that have appeared since. Returns how many events it claimed; a caller may call
    again at once while that equals `limit`."""
    now = now or utcnow()
    claimed = 0
    seen: set[int] = set()
    async with session_factory() as session:
        linked = await funding_repo.link_orphan_relations(session, now=now)
        await session.commit()
        if linked:
            logger.info("linked %d fees or adjustments to their transfers", linked)
        while claimed < limit:
            row = await repo.claim_due_event(session, now=now, skip=seen)
            if row is None:
                await session.rollback()
                break
            claimed += 1
            seen.add(row.id)
            event_pk, request_id = row.id, row.request_id
            try:
                await _apply_claimed(session, row, parsed=None, now=now)
                await session.commit()
            except Exception:
                await session.rollback()
                await _note_failure(session, event_pk, request_id, now=now)
    return claimed


# -- an operator's replay ------------------------------------------------------------------------


class ReplayRefused(StrEnum):
    APPLIED = "applied"  # it did what it says already
    RECORDED = "recorded"  # its word is in the transaction's history (applied, withheld, stale)
    BODY_CLEARED = "body_cleared"  # retention has cleared the stored body
    UNREADABLE = "unreadable"  # the stored body still cannot be read


@dataclass(frozen=True, slots=True)
class Replayed:
    row: WebhookEvent
    refused: ReplayRefused | None = None
    why: str | None = None


async def replay(
    session: AsyncSession, event_pk: int, *, actor: str, now: datetime
) -> Replayed | None:
    """Apply a stored event again at an operator's request, as `rematch_parked` would, with the
    operator as the actor of the history rows it writes (source `admin`). None when no event has
    this id. Refused: an APPLIED event, one whose body retention cleared or that still cannot be
    read, and a FIAT_EVENT whose word the transaction's history already holds (withheld by a
    hold: releasing the hold applies it; stale or contradicting: nothing a replay changes).
    A CONFLICT row applies the body it kept, under its own id. The caller commits."""
    row = await repo.lock_event(session, event_pk)
    if row is None:
        return None
    if row.status == EventStatus.APPLIED:
        return Replayed(row, ReplayRefused.APPLIED, f"the event is APPLIED: {row.outcome}")
    if row.body is None:
        return Replayed(row, ReplayRefused.BODY_CLEARED, "retention has cleared its body")
    try:
        event = parse_webhook(row.body, received_at=row.received_at)
    except MalformedWebhook as exc:
        return Replayed(row, ReplayRefused.UNREADABLE, str(exc))
    by = _By(actor=actor, event_id=row.request_id)
    if isinstance(event, FiatEvent) and await funding_repo.history_has_event(
        session, event.transaction.transaction_ref, row.request_id
    ):
        return Replayed(
            row,
            ReplayRefused.RECORDED,
            f"transaction {event.transaction.transaction_ref!r} has this event in its history "
            f"already ({row.status}: {row.outcome})",
        )
    status = await _apply_claimed(session, row, parsed=event, now=now, by=by)
    row.outcome = f"replayed by {actor}: {row.outcome}"
    if status == EventStatus.APPLIED:
        row.needs_operator = False
    return Replayed(row)


# -- small helpers -------------------------------------------------------------------------------


def _transaction_ref(event: ParsedEvent) -> str | None:
    if isinstance(event, FiatEvent):
        return event.transaction.transaction_ref
    if isinstance(event, BankLinkEvent):
        return event.link_ref
    return None


def _newer(
    event_time: datetime,
    status: str,
    current_time: datetime | None,
    current_status: str,
    rank: dict[Any, int],
) -> bool:
    if current_time is None or event_time > current_time:
        return True
    return event_time == current_time and rank.get(status, 0) > rank.get(current_status, 0)


def _last4(mask: str | None) -> str | None:
    digits = "".join(c for c in mask or "" if c.isdigit())
    return digits[-4:] or None
