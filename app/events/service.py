"""Writing events: the outbox side, called by the one state-change function of each kind.

Every writer queues its event on the session; the queue is written as one INSERT when the session
commits (a `before_commit` hook), inside the same database transaction as the change itself. A
rollback drops the queue with the change, so an event row exists if and only if its change
committed, and there is no "publish after commit" step for a crash to skip.

A transaction's move, hold or release is rendered at once: `state.transition` sets every public
field of the move before it records it, and two moves in one database transaction each publish
their own state, in order. A bank account's change is rendered at commit, from the row as the
transaction leaves it: its writer (`add_bank_account_history`) runs before the caller sets the
new status and reason.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction, object_session

from app.events import repository
from app.events.models import EVENT_VERSION, EventType
from app.events.repository import StoredEvent
from app.funding.errors import InvalidCursor
from app.funding.models import (
    BankAccount,
    BankAccountStatus,
    Party,
    PartyStatus,
    Transaction,
    TransactionStatus,
)
from app.funding.schemas import dump
from app.funding.views import bank_account_out, party_out, transaction_out

_QUEUE = "app.events.queue"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

TRANSACTION_TYPES: dict[TransactionStatus, EventType] = {
    TransactionStatus.UNKNOWN: EventType.TRANSACTION_UNKNOWN,
    TransactionStatus.PENDING: EventType.TRANSACTION_PENDING,
    TransactionStatus.COMPLETED: EventType.TRANSACTION_COMPLETED,
    TransactionStatus.FAILED: EventType.TRANSACTION_FAILED,
    TransactionStatus.DECLINED: EventType.TRANSACTION_DECLINED,
    TransactionStatus.CANCELLED: EventType.TRANSACTION_CANCELLED,
    TransactionStatus.RETURNED: EventType.TRANSACTION_RETURNED,
}
BANK_ACCOUNT_TYPES: dict[BankAccountStatus, EventType] = {
    BankAccountStatus.PENDING: EventType.BANK_ACCOUNT_PENDING,
    BankAccountStatus.LINKED: EventType.BANK_ACCOUNT_LINKED,
    BankAccountStatus.FAILED: EventType.BANK_ACCOUNT_FAILED,
    BankAccountStatus.UNLINKED: EventType.BANK_ACCOUNT_UNLINKED,
    BankAccountStatus.DISABLED: EventType.BANK_ACCOUNT_DISABLED,
    BankAccountStatus.REPLACED: EventType.BANK_ACCOUNT_REPLACED,
}
PARTY_TYPES: dict[PartyStatus, EventType] = {
    PartyStatus.ACTIVE: EventType.PARTY_ACTIVE,
    PartyStatus.INACTIVE: EventType.PARTY_INACTIVE,
    PartyStatus.SUSPENDED: EventType.PARTY_SUSPENDED,
    PartyStatus.LIQUIDATED: EventType.PARTY_LIQUIDATED,
    PartyStatus.UNDER_REVIEW: EventType.PARTY_UNDER_REVIEW,
    PartyStatus.CLOSED: EventType.PARTY_CLOSED,
}


def new_event_id() -> str:
    """`evt_` and 26 Crockford base32 characters: 48 bits of milliseconds and 80 random bits
    (ULID's layout), so ids are opaque and unique, and new ones land at the end of the index."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "evt_" + "".join(reversed(chars))


# What an event's subject renders to when it is written: (party_ref, data).
Render = Callable[[Session], tuple[str, dict[str, Any]]]


@dataclass(slots=True)
class _Queued:
    type: EventType
    subject_id: uuid.UUID | None
    # (party_ref, data) when known now; else how to render them at commit.
    rendered: tuple[str, dict[str, Any]] | Render


def _queue(session: AsyncSession | Session, item: _Queued) -> None:
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    queue: list[_Queued] | None = sync.info.get(_QUEUE)
    if queue is None:
        queue = sync.info[_QUEUE] = []
    queue.append(item)


def record(
    session: AsyncSession | Session,
    type_: EventType,
    *,
    party_ref: str,
    subject_id: uuid.UUID | None,
    data: dict[str, Any],
) -> None:
    """Queue an event about a change being made in `session`'s current transaction, written
    when it commits. `data` is the public API's JSON of the subject (built by the code the
    routes use: `app.funding.views`). Costs no round trip now; the commit sends one INSERT for
    all the events of the transaction."""
    _queue(session, _Queued(type_, subject_id, (party_ref, data)))


def transaction_event(session: AsyncSession | Session, txn: Transaction, type_: EventType) -> None:
    """A transaction's event, with the transaction as it is now."""
    record(
        session, type_, party_ref=txn.party_ref, subject_id=txn.id, data=dump(transaction_out(txn))
    )


def transaction_moved(session: AsyncSession | Session, txn: Transaction) -> None:
    """The event of the status `txn` has just moved to."""
    transaction_event(session, txn, TRANSACTION_TYPES[TransactionStatus(txn.status)])


@sa_event.listens_for(Transaction.held_for_review, "set", active_history=True)
def _hold_changed(txn: Transaction, value: object, old: object, _initiator: object) -> None:
    """A hold and its release, by whichever code sets the flag (the hold in
    `bakkt_sync._hold`, an operator's release): `transaction.held_for_review` /
    `transaction.released`, with the transaction as it is then. Rendered at once, like a move:
    a release applies the words it let through afterwards, and their events follow with their
    own states, in order."""
    if not isinstance(old, bool) or bool(value) == old:
        # A new row (no old value) or no change: nothing to announce.
        return
    session = object_session(txn)
    if session is None:
        raise RuntimeError(f"transaction {txn.id}: hold changed outside a session, no event")
    type_ = EventType.TRANSACTION_HELD_FOR_REVIEW if value else EventType.TRANSACTION_RELEASED
    transaction_event(session, txn, type_)


def bank_account_event(
    session: AsyncSession | Session, account_id: uuid.UUID, type_: EventType
) -> None:
    """A bank account's event, rendered at commit from the row as the transaction leaves it
    (found in the session's identity map; loaded by its key when a Core statement wrote it)."""

    def render(sync: Session) -> tuple[str, dict[str, Any]]:
        # A row added but not flushed yet is not in the identity map.
        account = next(
            (o for o in sync.new if isinstance(o, BankAccount) and o.id == account_id), None
        ) or sync.get(BankAccount, account_id)
        if account is None:  # pragma: no cover - the change that queued it wrote the row
            raise RuntimeError(f"bank account {account_id} of a queued event is missing")
        return account.party_ref, dump(bank_account_out(account))

    _queue(session, _Queued(type_, account_id, render))


def bank_account_moved(
    session: AsyncSession | Session, account_id: uuid.UUID, to_status: str
) -> None:
    """The event of a bank account's move to `to_status` (from its one history writer)."""
    bank_account_event(session, account_id, BANK_ACCOUNT_TYPES[BankAccountStatus(to_status)])


def bank_account_removed(
    session: AsyncSession | Session, account: BankAccount, *, reason_code: str
) -> None:
    """The last event of an account whose row is deleted (a link Bakkt never received): the
    account as it was, FAILED with `reason_code`, so a reader that saw it PENDING sees it end;
    the API answers 404 for it from now on."""
    shown = bank_account_out(account).model_copy(
        update={
            "status": BankAccountStatus.FAILED,
            "current": False,
            "reason_code": reason_code,
        }
    )
    record(
        session,
        EventType.BANK_ACCOUNT_FAILED,
        party_ref=account.party_ref,
        subject_id=account.id,
        data=dump(shown),
    )


def party_moved(
    session: AsyncSession | Session, party: Party, current_account: BankAccount | None
) -> None:
    """The event of the status `party` has just taken, with the party's public view."""
    record(
        session,
        PARTY_TYPES[PartyStatus(party.status)],
        party_ref=party.party_ref,
        subject_id=None,
        data=dump(party_out(party.party_ref, party, current_account)),
    )


def _rows(session: Session, queue: list[_Queued]) -> list[dict[str, Any]]:
    rows = []
    for item in queue:
        rendered = item.rendered
        party_ref, data = rendered if isinstance(rendered, tuple) else rendered(session)
        rows.append(
            {
                "id": new_event_id(),
                "type": str(item.type),
                "version": EVENT_VERSION,
                "party_ref": party_ref,
                "subject_id": item.subject_id,
                "data": data,
            }
        )
    return rows


def queued_count(session: AsyncSession) -> int:
    """How many events wait in the session's queue for its commit."""
    return len(session.sync_session.info.get(_QUEUE) or ())


def take_queued(session: AsyncSession) -> list[dict[str, Any]]:
    """The rows of the events queued so far, taken off the queue (the commit will not write
    them): for a hot-path statement that writes them itself together with their change, in the
    same database transaction, saving the commit's separate INSERT (issue 11)."""
    sync = session.sync_session
    queue: list[_Queued] | None = sync.info.pop(_QUEUE, None)
    return _rows(sync, queue) if queue else []


@sa_event.listens_for(Session, "before_commit")
def _write_queued(session: Session) -> None:
    queue: list[_Queued] | None = session.info.pop(_QUEUE, None)
    if not queue:
        return
    rows = _rows(session, queue)
    # Before the commit's final flush, in the same transaction as the changes: a failure here
    # fails the commit, and the changes go with it.
    repository.insert_events(session.connection(), rows)


@sa_event.listens_for(Session, "after_transaction_end")
def _drop_queued(session: Session, transaction: SessionTransaction) -> None:
    # The session's transaction ended without committing (rollback, close): the changes the
    # events describe are gone, and so are the events. After a commit the queue is already
    # empty. The service takes no savepoints; one that rolled back would keep its events.
    if transaction.parent is None:
        session.info.pop(_QUEUE, None)


# --- reading --------------------------------------------------------------------------------

_CURSOR = re.compile(r"^[0-9]{1,19}$")
_MAX_SEQ = 2**63 - 1


class InvalidEventCursor(InvalidCursor):
    """The funding list's code and status, for the same mistake."""


def parse_cursor(cursor: str | None) -> int:
    """A cursor (an event's SSE id or a page's `next`) as the seq it stands for; None or empty
    is the start. Anything we never handed out is refused by name."""
    if cursor is None or cursor == "":
        return 0
    if not _CURSOR.match(cursor) or int(cursor) > _MAX_SEQ:
        raise InvalidEventCursor(
            "Pass back the `next` of a page, or the `id` of an event, unchanged."
        )
    return int(cursor)


def cursor_of(seq: int) -> str:
    return str(seq)


def _utc_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_json(event: StoredEvent) -> dict[str, Any]:
    """The public JSON of a stored event (version 1)."""
    return {
        "id": event.id,
        "type": event.type,
        "version": event.version,
        "createdAt": _utc_text(event.created_at),
        "partyRef": event.party_ref,
        "data": event.data,
    }


@dataclass(frozen=True, slots=True)
class Page:
    events: list[StoredEvent]
    next: str
    has_more: bool

    def json(self) -> dict[str, Any]:
        return {
            "data": [event_json(e) for e in self.events],
            "next": self.next,
            "hasMore": self.has_more,
        }


async def read_page(
    session: AsyncSession, *, after: str | None, limit: int, party_ref: str | None = None
) -> Page:
    """The numbered events after the cursor `after`, oldest first, of one party or of all."""
    start = parse_cursor(after)
    rows = await repository.page(session, after=start, limit=limit + 1, party_ref=party_ref)
    await session.commit()
    shown = rows[:limit]
    last = shown[-1].seq if shown else start
    return Page(shown, cursor_of(last), len(rows) > limit)
