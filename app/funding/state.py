"""The one place that knows how a transaction's status may move.

Every move, by any source (the API's own call to Bakkt, a webhook, a sync, an operator), goes
through `transition()`, which applies it or records it as ignored, and always appends history;
a move that applies also writes its event (`app.events`), in the same database transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from app.bakkt.types import TransactionStatus as BakktStatus
from app.core.clock import utcnow
from app.events import service as events
from app.events.models import EventType
from app.funding.models import HistorySource, Transaction, TransactionHistory
from app.funding.models import TransactionStatus as Status

TERMINAL: frozenset[Status] = frozenset(
    {Status.FAILED, Status.DECLINED, Status.CANCELLED, Status.RETURNED}
)
# Settled for now, but an ACH return can still arrive after completion.
FINAL_UNLESS_RETURNED: frozenset[Status] = frozenset({Status.COMPLETED})
OPEN: frozenset[Status] = frozenset({Status.SUBMITTING, Status.UNKNOWN, Status.PENDING})

_BAKKT_OUTCOMES = frozenset(
    {Status.PENDING, Status.COMPLETED, Status.DECLINED, Status.CANCELLED, Status.RETURNED}
)

# A webhook can outrun our own record of Bakkt's answer, so SUBMITTING and UNKNOWN may move
# straight to any state Bakkt reports. Terminal states stay terminal except COMPLETED -> RETURNED.
ALLOWED_MOVES: dict[Status, frozenset[Status]] = {
    Status.SUBMITTING: _BAKKT_OUTCOMES | {Status.UNKNOWN, Status.FAILED},
    Status.UNKNOWN: _BAKKT_OUTCOMES | {Status.FAILED},
    Status.PENDING: frozenset(
        {Status.COMPLETED, Status.DECLINED, Status.CANCELLED, Status.RETURNED}
    ),
    Status.COMPLETED: frozenset({Status.RETURNED}),
    Status.FAILED: frozenset(),
    Status.DECLINED: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.RETURNED: frozenset(),
}


def _predecessors() -> dict[Status, frozenset[Status]]:
    out: dict[Status, set[Status]] = {state: set() for state in Status}
    for start in Status:
        stack = list(ALLOWED_MOVES[start])
        seen: set[Status] = set()
        while stack:
            state = stack.pop()
            if state in seen:
                continue
            seen.add(state)
            out[state].add(start)
            stack.extend(ALLOWED_MOVES[state])
    return {state: frozenset(before) for state, before in out.items()}


# For each state, the states that lead to it: Bakkt reporting one of those is an older word than
# the one we acted on (a later event got here first), not a disagreement.
BEHIND: dict[Status, frozenset[Status]] = _predecessors()

_FROM_BAKKT: dict[BakktStatus, Status] = {
    BakktStatus.PENDING: Status.PENDING,
    BakktStatus.COMPLETE: Status.COMPLETED,
    BakktStatus.DECLINED: Status.DECLINED,
    BakktStatus.CANCELLED: Status.CANCELLED,
    BakktStatus.RETURNED: Status.RETURNED,
}


def from_bakkt_status(status: BakktStatus | str) -> Status | None:
    """Our status for Bakkt's; None for a value we do not know (kept raw by the client)."""
    if isinstance(status, BakktStatus):
        return _FROM_BAKKT[status]
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    apply: bool
    why_not: str | None = None


def decide(
    current: Status,
    target: Status,
    *,
    current_event_time: datetime | None = None,
    event_time: datetime | None = None,
) -> Decision:
    if target == current:
        return Decision(False, "already in this state")
    if target not in ALLOWED_MOVES[current]:
        return Decision(False, f"move {current} -> {target} is not allowed")
    # Bakkt's clock orders its own events; ours (api) have no event time and never block one.
    if (
        event_time is not None
        and current_event_time is not None
        and event_time < current_event_time
    ):
        return Decision(False, "stale: older than the event that set the current state")
    return Decision(True)


class Judgement(StrEnum):
    """What Bakkt reporting a status means for a transaction we hold in another."""

    SAME = "same"  # nothing to do
    APPLY = "apply"  # the move is allowed and not older than our state
    STALE = "stale"  # a late word: behind our state, or an allowed move older than it
    CONFLICT = "conflict"  # no delay or redelivery explains it: an operator decides


def judge(
    current: Status,
    target: Status,
    *,
    current_event_time: datetime | None,
    event_time: datetime | None,
) -> Judgement:
    """The one reading of the table for Bakkt's word, used by webhooks and every sync."""
    if target == current:
        return Judgement.SAME
    if decide(current, target, current_event_time=current_event_time, event_time=event_time).apply:
        return Judgement.APPLY
    if current is Status.FAILED:
        # Ours alone (Bakkt never reports it): any word from Bakkt means it did take the transfer.
        return Judgement.CONFLICT
    if target in BEHIND[current] or target in ALLOWED_MOVES[current]:
        return Judgement.STALE
    return Judgement.CONFLICT


def transition(
    session: AsyncSession,
    txn: Transaction,
    target: Status,
    *,
    source: HistorySource,
    event_id: str | None = None,
    event_time: datetime | None = None,
    reason_code: str | None = None,
    reason_description: str | None = None,
    note: str | None = None,
    withhold: str | None = None,
    actor: str | None = None,
) -> bool:
    """Apply `target` to `txn` if the table allows it, else record it as ignored; with
    `withhold` (the reason, kept as the note), record it as seen and not applied whatever the
    table says (a transaction held for review). `actor` names the operator behind a move of
    source `admin`.

    The caller holds the row lock on `txn` (`app.funding.repository.lock_transaction*`) and
    commits. Returns True when the status moved.
    """
    current = Status(txn.status)
    decision = (
        Decision(False, withhold)
        if withhold is not None
        else decide(
            current, target, current_event_time=txn.status_event_time, event_time=event_time
        )
    )
    now = utcnow()
    session.add(
        TransactionHistory(
            transaction_id=txn.id,
            from_status=current,
            to_status=target,
            source=source,
            event_id=event_id,
            reason_code=reason_code,
            applied=decision.apply,
            note=note if decision.apply else (withhold or _join(decision.why_not, note)),
            event_time=event_time,
            actor=actor,
        )
    )
    if not decision.apply:
        return False
    txn.status = target
    txn.updated_at = now
    if event_time is not None:
        txn.status_event_time = event_time
    if reason_code is not None:
        txn.reason_code = reason_code
    if reason_description is not None:
        txn.reason_description = reason_description
    events.transaction_moved(session, txn)
    return True


def record_creation(
    session: AsyncSession,
    txn: Transaction,
    *,
    source: HistorySource,
    event_id: str | None = None,
    event_time: datetime | None = None,
    note: str | None = None,
    actor: str | None = None,
) -> None:
    """The first history row of a transaction: how it came to exist, in its first state, and
    its events: `transaction.created`, and for a row Bakkt started in a later state (an inbound
    wire COMPLETED) that state's event too, so a reader that acts on `transaction.completed`
    misses none."""
    session.add(
        TransactionHistory(
            transaction_id=txn.id,
            from_status=None,
            to_status=txn.status,
            source=source,
            event_id=event_id,
            reason_code=txn.reason_code,
            applied=True,
            note=note,
            event_time=event_time,
            actor=actor,
        )
    )
    events.transaction_event(session, txn, EventType.TRANSACTION_CREATED)
    if txn.status != Status.SUBMITTING:
        events.transaction_moved(session, txn)


def source_of(source: HistorySource, actor: str | None) -> HistorySource:
    """The history source of a row: `admin` whenever an operator made us act, whatever the word
    came through (a replayed webhook, a forced sync); `actor` then says who."""
    return HistorySource.ADMIN if actor is not None else source


def _join(*parts: str | None) -> str | None:
    text = "; ".join(p for p in parts if p)
    return text or None
