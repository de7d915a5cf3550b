"""Writing events: the outbox side. Called by the one state-change function of each kind.

`record()` queues an event on the session; the queue is written as one INSERT when the session
commits (a `before_commit` hook), inside the same database transaction as the change itself. A
rollback drops the queue with the change, so an event row exists if and only if its change
committed, and no "publish after commit" step can be skipped by a crash.

`data` is rendered when the event is written, from the ORM object as the transaction leaves it:
a caller that moves a status and then sets another field (a bank account's status after its
history row, a transaction's next check after its move) publishes the final state, not the one
it had halfway through.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from app.events import repository
from app.events.models import EVENT_VERSION, EventType

_QUEUE = "app.events.queue"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_event_id() -> str:
    """`evt_` and 26 Crockford base32 characters: 48 bits of milliseconds and 80 random bits
    (ULID's layout), so ids are opaque and unique, and new ones land at the end of the index."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "evt_" + "".join(reversed(chars))


@dataclass(slots=True)
class _Queued:
    type: EventType
    party_ref: str
    subject_id: uuid.UUID | None
    render: Callable[[], dict[str, Any]]


def record(
    session: AsyncSession | Session,
    type_: EventType,
    *,
    party_ref: str,
    subject_id: uuid.UUID | None,
    render: Callable[[], dict[str, Any]],
) -> None:
    """Queue an event about a change being made in `session`'s current transaction.

    `render` returns the event's `data` (the public API's JSON of the subject, built by the
    same code the routes use); it is called once, when the transaction commits. Costs no round
    trip now; the commit sends one INSERT for all the events of the transaction.
    """
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    queue: list[_Queued] | None = sync.info.get(_QUEUE)
    if queue is None:
        queue = sync.info[_QUEUE] = []
    queue.append(_Queued(type_, party_ref, subject_id, render))


@sa_event.listens_for(Session, "before_commit")
def _write_queued(session: Session) -> None:
    queue: list[_Queued] | None = session.info.pop(_QUEUE, None)
    if not queue:
        return
    rows = [
        {
            "id": new_event_id(),
            "type": str(item.type),
            "version": EVENT_VERSION,
            "party_ref": item.party_ref,
            "subject_id": item.subject_id,
            "data": item.render(),
        }
        for item in queue
    ]
    # Before the final flush of the commit: in the same transaction as the changes, and a
    # failure here fails the commit, so the changes go with it.
    repository.insert_events(session.connection(), rows)


@sa_event.listens_for(Session, "after_transaction_end")
def _drop_queued(session: Session, transaction: SessionTransaction) -> None:
    # The session's transaction ended without committing (rollback, close): the changes the
    # events describe are gone, and so are the events. After a commit the queue is already
    # empty. The service takes no savepoints; one that rolled back would keep its events.
    if transaction.parent is None:
        session.info.pop(_QUEUE, None)
