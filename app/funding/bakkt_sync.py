"""Bakkt says this about a transaction: the one rule for what that does, whoever heard it.

The webhook receiver (a FIAT_EVENT), settling an unknown outcome, the pending sweep and
reconciliation (a read of Bakkt's record) all hand Bakkt's word to `record` or `apply`, which
- cross-check it against our row (party, amount, currency, kind) and hold the transaction for
  review when they disagree, so neither side silently wins;
- move the status through `state.transition` when `state.judge` says the move stands, and tell a
  late word (stale) from a contradiction (an operator decides);
- create the rows Bakkt starts on its own (inbound wires, return fees, write-offs, adjustments)
  and link fees and adjustments to the transfer they concern;
- apply the ACH return policy to the bank account a return came from.
The caller holds the session and commits; what it does with the verdict (the webhook's stored
outcome, a job's schedule, reconciliation's drift counts) stays with the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.service import AlertSpec
from app.bakkt.types import BakktTransaction, TransactionKind
from app.core.clock import utcnow
from app.core.money import format_dollars, whole_cents
from app.core.text import clip
from app.funding import repository as repo
from app.funding.models import (
    HistorySource,
    Transaction,
    TransactionMethod,
    TransactionOrigin,
    TransactionType,
)
from app.funding.models import TransactionStatus as Status
from app.funding.state import (
    OPEN,
    Judgement,
    decide,
    from_bakkt_status,
    judge,
    record_creation,
    source_of,
    transition,
)

log = logging.getLogger("app.funding")

REASON_CODE_LENGTH = 64

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
# Bakkt's transaction kinds in our terms (docs/bakkt-contract.md A5).
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

HELD_ALERT = "transaction_held_for_review"
# The note of every word withheld from a held transaction (its history row, applied = false),
# by which `release_hold` finds them again.
HELD_NOTE = "held for review"
RELEASE_NOTE = "released from review"
# Operators' tooling knows the webhook receiver's and the jobs' conflicts by these two names.
CONFLICT_ALERTS = {
    HistorySource.WEBHOOK: "transaction_state_conflict",
    HistorySource.SYNC: "transaction_status_conflict",
}


class Verdict(StrEnum):
    CREATED = "created"  # a transaction Bakkt started, new to us
    MOVED = "moved"
    SAME = "same"
    STALE = "stale"  # a late word: ours is further along
    CONFLICT = "conflict"  # the table refuses the move and nothing explains it
    HELD = "held"  # party, amount, currency or kind disagree: held for review
    UNREADABLE = "unreadable"  # a status we do not know
    NOT_FOUND = "not_found"  # one of ours (not a kind Bakkt starts) that we have no row for
    UNRECORDABLE = "unrecordable"  # Bakkt-started, but an amount the ledger cannot hold


@dataclass(frozen=True, slots=True)
class BakktReport:
    """One statement of Bakkt's about a transaction: a FIAT_EVENT, or a read of its record."""

    transaction: BakktTransaction
    source: HistorySource
    # Bakkt's clock for this statement: the event's time, or the record's `updatedAt`.
    at: datetime
    # Who is looking, for hold reasons and alerts: "webhook e-1", "sweep", "reconciliation".
    context: str
    # The webhook's requestId. An event is recorded in history whatever it does; a read only
    # when it moves something or contradicts us.
    event_id: str | None = None
    # History notes of a move, and of the creation of a row Bakkt started.
    note: str | None = None
    creation_note: str | None = None
    # The operator who made us ask or apply (a forced sync, a replayed webhook): the history
    # rows are then of source `admin`, with this actor.
    actor: str | None = None

    @property
    def history_source(self) -> HistorySource:
        return source_of(self.source, self.actor)


@dataclass(slots=True)
class Applied:
    verdict: Verdict
    txn: Transaction | None = None
    target: Status | None = None
    # Our status before Bakkt's word was applied.
    before: Status | None = None
    # What happened, for the webhook's stored outcome.
    notes: list[str] = field(default_factory=list)
    # The disagreement, when HELD.
    mismatch: str | None = None
    # Set when an operator must look (a new hold, a conflict); the caller raises it.
    alert: AlertSpec | None = None
    # The transfer Bakkt named as related that we do not have yet; reconciliation links it at
    # the end of its run, the webhook receiver's `rematch` from the stored event.
    unlinked_related: str | None = None


async def record(session: AsyncSession, report: BakktReport, *, now: datetime) -> Applied:
    """Apply Bakkt's word to the transaction it names, found (and locked) by its ref; create
    the row first when it is one Bakkt started."""
    found = report.transaction
    target = from_bakkt_status(found.status)
    if target is None:
        return Applied(Verdict.UNREADABLE)
    locked = await repo.lock_transaction_by_ref_with_orphans(session, found.transaction_ref)
    if locked is not None:
        txn, orphans = locked
        return await apply(session, txn, report, now=now, orphans=orphans)
    if found.kind not in BAKKT_ORIGINATED:
        return Applied(Verdict.NOT_FOUND, target=target)
    cents = whole_cents(found.amount)
    if cents is None or len(found.currency) != 3:
        return Applied(Verdict.UNRECORDABLE, target=target)
    created = await _insert_bakkt_started(session, found, target, cents, report.at, now=now)
    made = await repo.lock_transaction_by_ref(session, found.transaction_ref)
    if made is None:  # pragma: no cover - the insert or a concurrent one made it
        raise RuntimeError(f"transaction {found.transaction_ref} vanished")
    txn = made
    if created is not None:
        record_creation(
            session,
            txn,
            source=report.history_source,
            event_id=report.event_id,
            event_time=report.at,
            note=report.creation_note or f"started by Bakkt ({found.kind})",
            actor=report.actor,
        )
        await repo.link_orphan_relations(session, related_ref=txn.bakkt_ref, now=now)
        unlinked = found.related_transaction_ref if txn.related_transaction_id is None else None
        return Applied(
            Verdict.CREATED,
            txn,
            target,
            notes=[f"created {txn.type} in {txn.status}"],
            unlinked_related=unlinked,
        )
    # A concurrent event (or the webhook before reconciliation) created it: compare (and link
    # whatever waits for it, as the creator would have).
    return await apply(session, txn, report, now=now)


async def apply(
    session: AsyncSession,
    txn: Transaction,
    report: BakktReport,
    *,
    now: datetime,
    orphans: bool = True,
) -> Applied:
    """Apply Bakkt's word to `txn`, whose row lock the caller holds. `orphans=False`: the
    caller's lock query saw no fee or adjustment waiting to be linked to it."""
    found = report.transaction
    target = from_bakkt_status(found.status)
    if target is None:
        log.warning("bakkt reports unknown status %r for %s", found.status, found.transaction_ref)
        return Applied(Verdict.UNREADABLE, txn)
    before = Status(txn.status)
    problem = mismatch(txn, found)
    if problem and not _accepted(txn, problem):
        return _hold(session, txn, report, target, problem, now=now)
    judgement = judge(
        before, target, current_event_time=txn.status_event_time, event_time=report.at
    )
    if report.event_id is None and judgement in (Judgement.SAME, Judgement.STALE):
        return Applied(Verdict.SAME if judgement is Judgement.SAME else Verdict.STALE, txn, target)
    reason_code = clip(found.reason_code, REASON_CODE_LENGTH)
    moved = transition(
        session,
        txn,
        target,
        source=report.history_source,
        event_id=report.event_id,
        event_time=report.at,
        reason_code=reason_code,
        reason_description=found.reason_description,
        note=report.note,
        actor=report.actor,
    )
    applied = Applied(
        Verdict.MOVED if moved else _VERDICTS[judgement],
        txn,
        target,
        before,
        notes=[f"{target} applied" if moved else f"{target} recorded, not applied"],
    )
    applied.unlinked_related = await _link_related(session, txn, found)
    if orphans:
        await repo.link_orphan_relations(session, related_ref=txn.bakkt_ref, now=now)
    if target is Status.RETURNED and reason_code:
        note = await _return_policy(
            session, txn, found.kind, reason_code, now=now, actor=report.actor
        )
        if note:
            applied.notes.append(note)
    if applied.verdict is Verdict.CONFLICT:
        data: dict[str, object] = {
            "transactionId": str(txn.id),
            "bakktRef": txn.bakkt_ref,
            "ours": before,
            "bakkt": target,
        }
        if report.event_id is not None:
            data["requestId"] = report.event_id
        applied.alert = AlertSpec(
            CONFLICT_ALERTS[report.source],
            f"transaction {txn.id}",
            f"Bakkt reports {target} for a transaction that is {before}",
            data,
        )
    return applied


_VERDICTS = {
    Judgement.SAME: Verdict.SAME,
    Judgement.STALE: Verdict.STALE,
    Judgement.CONFLICT: Verdict.CONFLICT,
    # Refused after all: only `transition` and `judge` disagreeing could get here.
    Judgement.APPLY: Verdict.CONFLICT,
}


def mismatch(txn: Transaction, found: BakktTransaction) -> str | None:
    """How Bakkt's record of `txn` differs from ours in what the transaction is; None if not."""
    problems = []
    if txn.party_ref != found.party_ref:
        problems.append(f"party {found.party_ref!r} is not the transaction's")
    if whole_cents(found.amount) != txn.amount_cents:
        problems.append(
            f"amount {found.amount} differs from ours {format_dollars(txn.amount_cents)}"
        )
    if found.currency.upper() != txn.currency:
        problems.append(f"currency {found.currency} differs from ours {txn.currency}")
    if isinstance(found.kind, TransactionKind):
        type_, method = KIND_TYPES[found.kind]
        if txn.type != type_ or (method and txn.method and txn.method != method):
            problems.append(f"kind {found.kind} does not fit a {txn.method or ''} {txn.type}")
    return "; ".join(problems) or None


def _hold(
    session: AsyncSession,
    txn: Transaction,
    report: BakktReport,
    target: Status,
    problem: str,
    *,
    now: datetime,
) -> Applied:
    """Bakkt and we disagree about what this transaction is: neither side silently wins. The
    first disagreement is the review reason and raises the alert; a later event about a held
    transaction is only recorded."""
    found = report.transaction
    newly_held = not txn.held_for_review
    if newly_held:
        txn.held_for_review = True
        txn.review_reason = f"{report.context}: {problem}"
        txn.review_mismatch = problem
        txn.updated_at = now
    if newly_held or report.event_id is not None:
        transition(
            session,
            txn,
            target,
            source=report.history_source,
            event_id=report.event_id,
            event_time=report.at,
            reason_code=clip(found.reason_code, REASON_CODE_LENGTH),
            withhold=f"{HELD_NOTE}: {problem}",
            actor=report.actor,
        )
    alert = None
    if newly_held:
        data: dict[str, object] = {
            "transactionId": str(txn.id),
            "bakktRef": txn.bakkt_ref,
            "ours": {"amount": format_dollars(txn.amount_cents), "currency": txn.currency},
            "bakkt": {"amount": str(found.amount), "currency": found.currency},
        }
        if report.event_id is not None:
            data["requestId"] = report.event_id
        alert = AlertSpec(HELD_ALERT, f"transaction {txn.id}", f"{report.context}: {problem}", data)
    return Applied(Verdict.HELD, txn, target, Status(txn.status), mismatch=problem, alert=alert)


def _accepted(txn: Transaction, problem: str) -> bool:
    """An operator released the hold this very disagreement caused: Bakkt's word stands."""
    return not txn.held_for_review and txn.review_mismatch == problem


@dataclass(frozen=True, slots=True)
class Released:
    before: Status
    # The statuses the withheld words moved the transaction through, in order.
    moved: list[Status]
    # The disagreement the operator accepted (None for a hold older than its recording).
    accepted: str | None


async def release_hold(
    session: AsyncSession,
    txn: Transaction,
    *,
    source: HistorySource,
    actor: str | None,
    note: str | None,
) -> Released:
    """An operator has looked at what held `txn` and lets it go: the hold ends, its
    disagreement is accepted (a later word of Bakkt's with the same disagreement applies instead
    of holding the transaction again; a different one holds it again), and the words withheld
    from it are applied through `state.transition`, in Bakkt's order, each where the table
    allows it from the state the ones before left. Every release writes at least one history
    row. The caller checked `txn.held_for_review`, holds the row lock and commits."""
    before = Status(txn.status)
    now = utcnow()
    history_source = source_of(source, actor)
    txn.held_for_review = False
    txn.updated_at = now
    moved: list[Status] = []
    for word in await repo.withheld_words(session, txn.id, note_prefix=HELD_NOTE):
        target = Status(word.to_status)
        current = Status(txn.status)
        # Checked first so that words the table refuses (older, repeated, applied by an earlier
        # release) leave no second row: the row that withheld them already tells of them.
        if not decide(
            current, target, current_event_time=txn.status_event_time, event_time=word.event_time
        ).apply:
            continue
        transition(
            session,
            txn,
            target,
            source=history_source,
            event_time=word.event_time,
            reason_code=word.reason_code,
            note=_with_note(
                f"{RELEASE_NOTE}: applies what was withheld from {word.event_id or 'a sync'}",
                note,
            ),
            actor=actor,
        )
        moved.append(target)
        if target is Status.RETURNED and word.reason_code:
            await _return_policy(session, txn, "", word.reason_code, now=now, actor=actor)
    if not moved:
        transition(
            session,
            txn,
            before,
            source=history_source,
            note=_with_note(f"{RELEASE_NOTE}: nothing withheld to apply", note),
            actor=actor,
        )
    # Recovery skips held transactions; one still open is looked at again right away.
    txn.next_check_at = now if Status(txn.status) in OPEN else None
    return Released(before, moved, txn.review_mismatch)


def _with_note(text: str, note: str | None) -> str:
    return f"{text}; {note}" if note else text


async def _link_related(
    session: AsyncSession, txn: Transaction, found: BakktTransaction
) -> str | None:
    """Point a fee or adjustment at its transfer; the transfer's ref when it is not known yet."""
    if (
        txn.origin != TransactionOrigin.BAKKT
        or txn.related_transaction_id is not None
        or not found.related_transaction_ref
    ):
        return None
    related_id = await repo.transaction_id_by_ref(session, found.related_transaction_ref)
    if related_id is None or related_id == txn.id:
        return found.related_transaction_ref
    txn.related_transaction_id = related_id
    return None


async def link_later(
    session: AsyncSession, unlinked: list[tuple[str, str]], *, now: datetime
) -> None:
    """Link (Bakkt-started ref, related ref) pairs whose transfer has been recorded since."""
    for ref, related_ref in unlinked:
        related_id = await repo.transaction_id_by_ref(session, related_ref)
        if related_id is not None:
            await repo.link_relation(session, bakkt_ref=ref, related_id=related_id, now=now)


async def _return_policy(
    session: AsyncSession,
    txn: Transaction,
    kind: TransactionKind | str,
    reason_code: str,
    *,
    now: datetime,
    actor: str | None = None,
) -> str | None:
    """What an ACH return code says about the bank account it came from. Applied whether or not
    the return moved the transaction: the code is a fact about the account either way."""
    is_ach = txn.method == TransactionMethod.ACH or kind in _ACH_KINDS
    if not is_ach or txn.bank_account_id is None:
        return None
    code = reason_code.strip().upper()
    if code in ACCOUNT_UNUSABLE_CODES:
        if await repo.disable_bank_account(
            session, txn.bank_account_id, reason_code=code, now=now, actor=actor
        ):
            return f"bank account disabled ({code})"
    elif code in UNAUTHORIZED_CODES and await repo.flag_bank_account_for_review(
        session, txn.bank_account_id, now=now
    ):
        return f"bank account marked for review ({code})"
    return None


async def _insert_bakkt_started(
    session: AsyncSession,
    found: BakktTransaction,
    status: Status,
    amount_cents: int,
    status_event_time: datetime,
    *,
    now: datetime,
) -> UUID | None:
    """Store a transaction Bakkt started, and its party if that is new: the new row's id, None
    when the row exists already."""
    assert isinstance(found.kind, TransactionKind)  # noqa: S101 - only BAKKT_ORIGINATED get here
    type_, method = KIND_TYPES[found.kind]
    await repo.ensure_party(session, found.party_ref, now=now)
    related_id = None
    if found.related_transaction_ref:
        # Unknown yet is fine: the relation is filled in when that transfer shows up.
        related_id = await repo.transaction_id_by_ref(session, found.related_transaction_ref)
    return await repo.insert_bakkt_transaction(
        session,
        party_ref=found.party_ref,
        bakkt_ref=found.transaction_ref,
        type_=type_,
        method=method,
        status=status,
        amount_cents=amount_cents,
        currency=found.currency.upper(),
        reason_code=clip(found.reason_code, REASON_CODE_LENGTH),
        reason_description=found.reason_description,
        related_transaction_id=related_id,
        status_event_time=status_event_time,
        created_at=found.created_at,
        now=now,
    )
