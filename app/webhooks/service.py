"""Bakkt's webhooks, stored once and applied exactly once, whatever order they arrive in.

Two short database transactions per delivery: the intake commits the event (so the answer can be
2xx even if applying it fails), then the apply claims the stored event under a row lock, moves
what it concerns, and commits. An event the apply could not finish stays claimable and is picked
up again by `rematch_parked`, which the recovery worker runs on a schedule.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bakkt.types import BakktTransaction, LinkStatus, TransactionKind
from app.bakkt.types import PartyStatus as BakktPartyStatus
from app.bakkt.webhooks import (
    BankLinkEvent,
    FiatEvent,
    MalformedWebhook,
    PartyEvent,
    UnknownEvent,
    parse_webhook,
)
from app.bakkt.webhooks import WebhookEvent as ParsedEvent
from app.core.backoff import backoff
from app.core.clock import utcnow
from app.core.money import format_dollars, whole_cents
from app.funding import repository as funding_repo
from app.funding.models import (
    BankAccount,
    BankAccountStatus,
    HistorySource,
    PartyStatus,
    Transaction,
    TransactionMethod,
    TransactionOrigin,
    TransactionType,
)
from app.funding.models import TransactionStatus as Status
from app.funding.state import ALLOWED_MOVES, from_bakkt_status, record_creation, transition
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

# NACHA return codes that say the account itself cannot be used again: closed, not found,
# invalid number, branch sold, bad routing, holder deceased, frozen, non-transaction account.
ACCOUNT_UNUSABLE_CODES = frozenset(
    {"R02", "R03", "R04", "R12", "R13", "R14", "R15", "R16", "R20", "R28"}
)
# NACHA's unauthorized-return family: the account works, but the consumer disputes the debit.
UNAUTHORIZED_CODES = frozenset({"R05", "R07", "R10", "R11", "R29", "R51"})

# Kinds Bakkt starts on its own; any other kind we do not know yet is ours and still in flight.
BAKKT_ORIGINATED = frozenset(
    {
        TransactionKind.WIRE_DEPOSIT,
        TransactionKind.ACH_RETURN_FEE,
        TransactionKind.PARTNER_WRITE_OFF,
        TransactionKind.BAKKT_WRITE_OFF,
        TransactionKind.DECEASED_PARTY,
        TransactionKind.OTHER_ADJUSTMENT,
    }
)
# Bakkt's transaction kinds in our terms (shared/bakkt/DECISIONS.md A5).
KIND_TYPES: dict[TransactionKind, tuple[TransactionType, TransactionMethod | None]] = {
    TransactionKind.ACH_DEPOSIT: (TransactionType.DEPOSIT, TransactionMethod.ACH),
    TransactionKind.ACH_WITHDRAW: (TransactionType.WITHDRAWAL, TransactionMethod.ACH),
    TransactionKind.WIRE_DEPOSIT: (TransactionType.DEPOSIT, TransactionMethod.WIRE),
    TransactionKind.WIRE_WITHDRAW: (TransactionType.WITHDRAWAL, TransactionMethod.WIRE),
    TransactionKind.ACH_RETURN_FEE: (TransactionType.RETURN_FEE, None),
    TransactionKind.PARTNER_WRITE_OFF: (TransactionType.PARTNER_WRITE_OFF, None),
    TransactionKind.BAKKT_WRITE_OFF: (TransactionType.BAKKT_WRITE_OFF, None),
    TransactionKind.DECEASED_PARTY: (TransactionType.DECEASED_PARTY, None),
    TransactionKind.OTHER_ADJUSTMENT: (TransactionType.ADJUSTMENT, None),
}
_ACH_KINDS = frozenset({TransactionKind.ACH_DEPOSIT, TransactionKind.ACH_WITHDRAW})

# A bank account Bakkt linked without our asking first (its hosted link page).
HOSTED_LINK_METHOD = "HOSTED"

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
}
_EVENT_TYPES: dict[type[Any], str] = {
    FiatEvent: "FIAT_EVENT",
    PartyEvent: "PARTY_EVENT",
    BankLinkEvent: "BANK_ACCOUNT_LINK",
}


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    subject: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: EventStatus
    detail: str
    # Set when an operator must look: the event is flagged and an operator_alerts row written.
    alert: Alert | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    request_id: str
    duplicate: bool
    status: str


# -- intake --------------------------------------------------------------------------------------


async def receive(session: AsyncSession, delivery: VerifiedWebhook) -> Receipt:
    """Store a verified delivery once, then apply it. Never calls Bakkt."""
    now = delivery.received_at
    try:
        event = parse_webhook(delivery.body)
    except MalformedWebhook as exc:
        return await _store_malformed(session, delivery, str(exc))
    if len(event.event_id) > 255:
        return await _store_malformed(session, delivery, "requestId is longer than 255 characters")

    event_pk = await repo.insert_event(
        session,
        request_id=event.event_id,
        event_type=_EVENT_TYPES.get(type(event))
        or (event.webhook_type[:64] if isinstance(event, UnknownEvent) else None),
        party_ref=_clip(event.party_ref, 255),
        transaction_ref=_clip(_transaction_ref(event), 255),
        related_ref=_clip(
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
    await session.commit()

    # A redelivery changes nothing, except that it may finish an event whose first apply was
    # lost; the claim (SKIP LOCKED, status RECEIVED) keeps that to one worker at a time.
    status = await _apply_stored(
        session, event.event_id, parsed=event, now=now, statuses=(EventStatus.RECEIVED,)
    )
    if status is None:
        status = await repo.event_status(session, event.event_id) or EventStatus.RECEIVED
        await session.rollback()
    return Receipt(event.event_id, duplicate=event_pk is None, status=status)


async def _store_malformed(session: AsyncSession, delivery: VerifiedWebhook, why: str) -> Receipt:
    # Verified but unreadable: Bakkt retrying it would not help, an operator has to look.
    request_id = delivery.webhook_id or "sha256:" + hashlib.sha256(delivery.body).hexdigest()
    if len(request_id) > 255:
        request_id = "sha256:" + hashlib.sha256(request_id.encode()).hexdigest()
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
        status=EventStatus.MALFORMED,
        outcome=f"malformed: {why}",
        needs_operator=True,
        next_attempt_at=None,
    )
    if event_pk is not None:
        repo.add_alert(
            session,
            kind="webhook_malformed",
            subject=f"webhook {request_id}",
            detail=f"A verified webhook could not be read: {why}",
            data={"requestId": request_id},
        )
        logger.warning("webhook %s malformed: %s", request_id, why)
    await session.commit()
    return Receipt(request_id, duplicate=event_pk is None, status=EventStatus.MALFORMED)


# -- applying ------------------------------------------------------------------------------------


async def _apply_stored(
    session: AsyncSession,
    request_id: str,
    *,
    parsed: ParsedEvent | None,
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
    session: AsyncSession, row: WebhookEvent, *, parsed: ParsedEvent | None, now: datetime
) -> str:
    event = parsed if parsed is not None else parse_webhook(row.body or b"")
    outcome = await _apply(session, event, now=now)
    row.attempts += 1
    row.processed_at = now
    row.next_attempt_at = None
    if outcome.status is EventStatus.PARKED:
        if row.attempts >= MAX_ATTEMPTS:
            outcome = Outcome(
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
        repo.add_alert(
            session,
            kind=outcome.alert.kind,
            subject=outcome.alert.subject,
            detail=outcome.detail,
            data=outcome.alert.data,
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
            repo.add_alert(
                session,
                kind="webhook_apply_failed",
                subject=f"webhook {request_id}",
                detail=f"Applying this webhook failed {attempts} times.",
                data={"requestId": request_id},
            )
        await session.commit()
    except Exception:
        # The event is stored and due again after STRANDED_AFTER: nothing is lost.
        await session.rollback()
        logger.exception("could not record the failure of webhook %s", request_id)


def _backoff(attempts: int) -> timedelta:
    seconds = backoff(attempts, base=RETRY_BASE.total_seconds(), cap=RETRY_CAP.total_seconds())
    return timedelta(seconds=seconds)


async def _apply(session: AsyncSession, event: ParsedEvent, *, now: datetime) -> Outcome:
    if isinstance(event, FiatEvent):
        return await _apply_fiat(session, event, now=now)
    if isinstance(event, PartyEvent):
        return await _apply_party(session, event, now=now)
    if isinstance(event, BankLinkEvent):
        return await _apply_link(session, event, now=now)
    return Outcome(
        EventStatus.IGNORED,
        f"unknown webhook type {event.webhook_type!r}: stored, not applied",
        Alert("webhook_unknown_type", f"webhook {event.event_id}", {"type": event.webhook_type}),
    )


# -- FIAT_EVENT ----------------------------------------------------------------------------------


async def _apply_fiat(session: AsyncSession, event: FiatEvent, *, now: datetime) -> Outcome:
    bakkt = event.transaction
    subject = f"transaction {bakkt.transaction_ref}"
    target = from_bakkt_status(bakkt.status)
    if target is None:
        return Outcome(
            EventStatus.IGNORED,
            f"unknown transactionStatus {bakkt.status!r}",
            Alert("webhook_unknown_status", subject, {"status": str(bakkt.status)}),
        )
    cents = whole_cents(bakkt.amount)
    txn = await funding_repo.lock_transaction_by_ref(session, bakkt.transaction_ref)
    if txn is None:
        if bakkt.kind not in BAKKT_ORIGINATED:
            # Ours, and Bakkt's event outran our own commit (or it is not ours at all).
            return Outcome(EventStatus.PARKED, f"no transaction {bakkt.transaction_ref!r} yet")
        if cents is None or len(bakkt.currency) != 3:
            return Outcome(
                EventStatus.IGNORED,
                f"cannot record amount {bakkt.amount} {bakkt.currency}",
                Alert("webhook_bad_amount", subject, {"requestId": event.event_id}),
            )
        created = await insert_bakkt_started(
            session,
            bakkt,
            party_ref=event.party_ref,
            status=target,
            amount_cents=cents,
            status_event_time=event.event_time,
            now=now,
        )
        txn = await funding_repo.lock_transaction_by_ref(session, bakkt.transaction_ref)
        if txn is None:  # pragma: no cover - the insert or a concurrent one made it
            raise RuntimeError(f"transaction {bakkt.transaction_ref} vanished")
        if created is not None:
            record_creation(
                session,
                txn,
                source=HistorySource.WEBHOOK,
                event_id=event.event_id,
                event_time=event.event_time,
                note=f"started by Bakkt ({bakkt.kind})",
            )
            await repo.link_orphan_relations(session, related_ref=txn.bakkt_ref, now=now)
            return Outcome(EventStatus.APPLIED, f"created {txn.type} in {txn.status}")

    mismatch = _mismatch(txn, event, cents)
    if mismatch:
        return await _hold(session, txn, event, target, mismatch, now=now)

    reason_code = _clip(bakkt.reason_code, 64)
    before = Status(txn.status)
    moved = transition(
        session,
        txn,
        target,
        source=HistorySource.WEBHOOK,
        event_id=event.event_id,
        event_time=event.event_time,
        reason_code=reason_code,
        reason_description=bakkt.reason_description,
    )
    notes = [f"{target} applied" if moved else f"{target} recorded, not applied"]
    if (
        txn.related_transaction_id is None
        and txn.origin == TransactionOrigin.BAKKT
        and bakkt.related_transaction_ref
    ):
        txn.related_transaction_id = await funding_repo.transaction_id_by_ref(
            session, bakkt.related_transaction_ref
        )
    await repo.link_orphan_relations(session, related_ref=txn.bakkt_ref, now=now)
    if target is Status.RETURNED and reason_code:
        note = await _return_policy(session, txn, bakkt.kind, reason_code, now=now)
        if note:
            notes.append(note)
    if not moved and _contradicts(before, target):
        # Not a late or repeated event: Bakkt and we tell different stories (typically a
        # transfer we gave up as FAILED that Bakkt did accept). The table keeps our state;
        # an operator decides.
        return Outcome(
            EventStatus.IGNORED,
            f"Bakkt reports {target} for a transaction that is {before}",
            Alert(
                "transaction_state_conflict",
                f"transaction {txn.id}",
                {"requestId": event.event_id, "ours": before, "bakkt": target},
            ),
        )
    return Outcome(EventStatus.APPLIED if moved else EventStatus.IGNORED, "; ".join(notes))


def _contradicts(current: Status, target: Status) -> bool:
    """A refused move that no delay or redelivery explains."""
    if current is Status.FAILED:
        # Ours alone (Bakkt never reports it): any word from Bakkt means it did take the transfer.
        return True
    if target == current or target is Status.PENDING or target in ALLOWED_MOVES[current]:
        return False
    # A late COMPLETE after a return that followed it.
    return not (current is Status.RETURNED and target is Status.COMPLETED)


async def insert_bakkt_started(
    session: AsyncSession,
    bakkt: BakktTransaction,
    *,
    party_ref: str,
    status: Status,
    amount_cents: int,
    status_event_time: datetime,
    now: datetime,
) -> UUID | None:
    """Store a transaction Bakkt started (a webhook's, or one reconciliation found), and its party
    if that is new: the new row's id, None when the row exists already."""
    assert isinstance(bakkt.kind, TransactionKind)  # noqa: S101 - only BAKKT_ORIGINATED get here
    type_, method = KIND_TYPES[bakkt.kind]
    await funding_repo.ensure_party(session, party_ref, now=now)
    related_id = None
    if bakkt.related_transaction_ref:
        # Unknown yet is fine: the relation is filled in when that transfer shows up.
        related_id = await funding_repo.transaction_id_by_ref(
            session, bakkt.related_transaction_ref
        )
    return await funding_repo.insert_bakkt_transaction(
        session,
        party_ref=party_ref,
        bakkt_ref=bakkt.transaction_ref,
        type_=type_,
        method=method,
        status=status,
        amount_cents=amount_cents,
        currency=bakkt.currency.upper(),
        reason_code=_clip(bakkt.reason_code, 64),
        reason_description=bakkt.reason_description,
        related_transaction_id=related_id,
        status_event_time=status_event_time,
        created_at=bakkt.created_at,
        now=now,
    )


def _mismatch(txn: Transaction, event: FiatEvent, cents: int | None) -> str | None:
    bakkt = event.transaction
    problems = []
    if txn.party_ref != event.party_ref:
        problems.append(f"party {event.party_ref!r} is not the transaction's")
    if cents != txn.amount_cents:
        problems.append(
            f"amount {bakkt.amount} differs from ours {format_dollars(txn.amount_cents)}"
        )
    if bakkt.currency.upper() != txn.currency:
        problems.append(f"currency {bakkt.currency} differs from ours {txn.currency}")
    if isinstance(bakkt.kind, TransactionKind):
        type_, method = KIND_TYPES[bakkt.kind]
        if txn.type != type_ or (method and txn.method and txn.method != method):
            problems.append(f"kind {bakkt.kind} does not fit a {txn.method or ''} {txn.type}")
    return "; ".join(problems) or None


async def _hold(
    session: AsyncSession,
    txn: Transaction,
    event: FiatEvent,
    target: Status,
    mismatch: str,
    *,
    now: datetime,
) -> Outcome:
    # Bakkt and we disagree about what this transaction is: neither side silently wins.
    txn.held_for_review = True
    txn.review_reason = f"webhook {event.event_id}: {mismatch}"
    txn.updated_at = now
    await repo.add_unapplied_history(
        session,
        transaction_id=txn.id,
        from_status=txn.status,
        to_status=target,
        event_id=event.event_id,
        event_time=event.event_time,
        reason_code=_clip(event.transaction.reason_code, 64),
        note=f"held for review: {mismatch}",
    )
    return Outcome(
        EventStatus.HELD,
        f"held for review: {mismatch}",
        Alert(
            "transaction_held_for_review",
            f"transaction {txn.id}",
            {
                "requestId": event.event_id,
                "transactionId": str(txn.id),
                "bakktRef": txn.bakkt_ref,
                "ours": {"amount": format_dollars(txn.amount_cents), "currency": txn.currency},
                "bakkt": {
                    "amount": str(event.transaction.amount),
                    "currency": event.transaction.currency,
                },
            },
        ),
    )


async def _return_policy(
    session: AsyncSession,
    txn: Transaction,
    kind: TransactionKind | str,
    reason_code: str,
    *,
    now: datetime,
) -> str | None:
    """What an ACH return code says about the bank account it came from. Applied whether or not
    the return moved the transaction: the code is a fact about the account either way."""
    is_ach = txn.method == TransactionMethod.ACH or kind in _ACH_KINDS
    if not is_ach or txn.bank_account_id is None:
        return None
    code = reason_code.strip().upper()
    if code in ACCOUNT_UNUSABLE_CODES:
        if await funding_repo.disable_bank_account(
            session, txn.bank_account_id, reason_code=code, now=now
        ):
            return f"bank account disabled ({code})"
    elif code in UNAUTHORIZED_CODES and await funding_repo.flag_bank_account_for_review(
        session, txn.bank_account_id, now=now
    ):
        return f"bank account marked for review ({code})"
    return None


# -- PARTY_EVENT ---------------------------------------------------------------------------------


async def _apply_party(session: AsyncSession, event: PartyEvent, *, now: datetime) -> Outcome:
    if not isinstance(event.status, BakktPartyStatus):
        return Outcome(
            EventStatus.IGNORED,
            f"unknown partyStatus {event.status!r}",
            Alert("webhook_unknown_status", f"party {event.party_ref}", {"status": event.status}),
        )
    status = PartyStatus(event.status.value)
    reason = _clip(event.reason_code, 64)
    if await repo.insert_party(
        session,
        party_ref=event.party_ref,
        status=status,
        reason=reason,
        event_time=event.event_time,
        now=now,
    ):
        return Outcome(EventStatus.APPLIED, f"party recorded as {status}")
    party = await repo.lock_party(session, event.party_ref)
    if party is None:  # pragma: no cover - parties are never deleted
        raise RuntimeError(f"party {event.party_ref} vanished")
    if not _newer(event.event_time, status, party.status_event_time, party.status, _PARTY_RANK):
        return Outcome(
            EventStatus.IGNORED, f"stale: the party is {party.status} since a later event"
        )
    party.status = status
    party.status_reason = reason
    party.status_event_time = event.event_time
    party.updated_at = now
    return Outcome(EventStatus.APPLIED, f"party now {status} ({reason})")


# -- BANK_ACCOUNT_LINK ---------------------------------------------------------------------------


async def _apply_link(session: AsyncSession, event: BankLinkEvent, *, now: datetime) -> Outcome:
    if not isinstance(event.status, LinkStatus):
        return Outcome(
            EventStatus.IGNORED,
            f"unknown linkStatus {event.status!r}",
            Alert("webhook_unknown_status", f"link {event.link_ref}", {"status": event.status}),
        )
    reason = _clip(event.reason_code, 64)
    target = BankAccountStatus(event.status.value)
    if target is BankAccountStatus.UNLINKED and (reason or "").upper() in ACCOUNT_UNUSABLE_CODES:
        # Bakkt unlinks an account after a return that made it unusable; the same end state as
        # the return itself, whichever of the two events comes first.
        target = BankAccountStatus.DISABLED
    bank_name = _clip(event.bank_name, 255)
    mask = _last4(event.account_mask)
    account_type = _clip(event.account_type, 32)

    account = await repo.lock_bank_account_by_link_ref(session, event.link_ref)
    if account is None:
        await funding_repo.ensure_party(session, event.party_ref, now=now)
        created = await repo.insert_bank_account(
            session,
            party_ref=event.party_ref,
            link_ref=event.link_ref,
            link_method=HOSTED_LINK_METHOD,
            status=target,
            bank_name=bank_name,
            account_mask=mask,
            account_type=account_type,
            reason_code=reason,
            event_time=event.event_time,
            now=now,
        )
        if created:
            return Outcome(EventStatus.APPLIED, f"bank account recorded as {target}")
        account = await repo.lock_bank_account_by_link_ref(session, event.link_ref)
        if account is None:  # pragma: no cover - the insert or a concurrent one made it
            raise RuntimeError(f"bank account {event.link_ref} vanished")

    if account.party_ref != event.party_ref:
        return Outcome(
            EventStatus.IGNORED,
            f"link {event.link_ref!r} belongs to another party",
            Alert(
                "webhook_party_mismatch",
                f"bank account {account.id}",
                {"requestId": event.event_id},
            ),
        )
    if account.status == BankAccountStatus.DISABLED and target is not BankAccountStatus.DISABLED:
        _fill_missing(account, bank_name, mask, account_type)
        return Outcome(EventStatus.IGNORED, "the account stays DISABLED after an ACH return")
    if not _newer(event.event_time, target, account.status_event_time, account.status, _LINK_RANK):
        _fill_missing(account, bank_name, mask, account_type)
        return Outcome(
            EventStatus.IGNORED, f"stale: the account is {account.status} since a later event"
        )
    account.status = target
    account.reason_code = reason
    account.status_event_time = event.event_time
    account.bank_name = bank_name or account.bank_name
    account.account_mask = mask or account.account_mask
    account.account_type = account_type or account.account_type
    account.updated_at = now
    return Outcome(EventStatus.APPLIED, f"bank account now {target}")


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
        linked = await repo.link_orphan_relations(session, now=now)
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


def _clip(value: str | None, length: int) -> str | None:
    return value[:length] if value else value
