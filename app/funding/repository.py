"""Every SQL statement on parties, bank accounts and transactions, whoever makes it: the funding
API, the webhook receiver, the recovery jobs and reconciliation all come here.

One row lock per table, `FOR NO KEY UPDATE` (the `lock_*` functions; the claims add SKIP LOCKED):
it excludes every other writer exactly like `FOR UPDATE`, but not the `KEY SHARE` lock a
foreign-key check takes, so inserting a fee that points at a locked transfer, or a transaction of a
locked party, does not wait for (or deadlock with) it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    CTE,
    BigInteger,
    ColumnElement,
    DateTime,
    Executable,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    column,
    delete,
    exists,
    func,
    select,
    text,
    tuple_,
    union,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached

from app.events import repository as events_repo
from app.events import service as events
from app.events.models import EventType
from app.funding.models import (
    BankAccount,
    BankAccountHistory,
    BankAccountStatus,
    HistorySource,
    LinkMethod,
    Party,
    PartyStatus,
    Transaction,
    TransactionHistory,
    TransactionOrigin,
    TransactionStatus,
)
from app.idempotency.repository import INTENT_CLAIM, finish_claim
from app.webhooks.models import WebhookEvent

# Transactions that never moved money do not count against a limit. Migration 0012's trigger,
# which keeps the running totals, says the same in SQL: a change here is a migration there.
NOT_COUNTED = (TransactionStatus.FAILED, TransactionStatus.DECLINED, TransactionStatus.CANCELLED)
# Not yet settled at Bakkt, and what reconciliation must look at whatever the party's status.
OPEN = (TransactionStatus.SUBMITTING, TransactionStatus.UNKNOWN, TransactionStatus.PENDING)
UNSETTLED = (TransactionStatus.SUBMITTING, TransactionStatus.UNKNOWN)
# How far back the webhook events are searched for fees and adjustments whose transfer has come.
ORPHAN_WINDOW = timedelta(days=7)


# --- parties ----------------------------------------------------------------------------------


# The money path's own statements, built once (see app/webhooks/repository.py on why).
_LOCK_PARTY = (
    select(Party)
    .where(Party.party_ref == bindparam("party_ref"))
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)
)


async def lock_party(session: AsyncSession, party_ref: str) -> Party | None:
    return (await session.scalars(_LOCK_PARTY, {"party_ref": party_ref})).one_or_none()


async def lock_party_for_money(session: AsyncSession, party_ref: str) -> Party:
    """`lock_or_create_party` for the money path: one round trip when the party exists (every
    request but its first), the insert only when it does not."""
    party = await lock_party(session, party_ref)
    if party is not None:
        return party
    return await lock_or_create_party(session, party_ref)


async def lock_or_create_party(session: AsyncSession, party_ref: str) -> Party:
    """The party row, created on first use, locked until the caller's transaction ends.

    Every money request of a party takes this lock before it reads its limits' windows, so two
    concurrent requests cannot both see room for themselves and together overshoot.
    """
    await session.execute(
        insert(Party)
        .values(party_ref=party_ref)
        .on_conflict_do_nothing(index_elements=["party_ref"])
    )
    party = await lock_party(session, party_ref)
    if party is None:  # pragma: no cover - parties are never deleted
        raise RuntimeError(f"party {party_ref} vanished")
    return party


async def ensure_party(session: AsyncSession, party_ref: str, *, now: datetime) -> None:
    """A party row for a party Bakkt tells us about first; an existing row is left alone."""
    statement = (
        insert(Party)
        .values(party_ref=party_ref, status=PartyStatus.ACTIVE, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=[Party.party_ref])
    )
    await session.execute(statement)


async def insert_party(
    session: AsyncSession,
    *,
    party_ref: str,
    status: str,
    reason: str | None,
    event_time: datetime,
    now: datetime,
    verification_url: str | None = None,
    verification_url_expires_at: datetime | None = None,
) -> bool:
    """A party first heard of in its own PARTY_EVENT; False when the row exists already."""
    statement = (
        insert(Party)
        .values(
            party_ref=party_ref,
            status=status,
            status_reason=reason,
            status_event_time=event_time,
            verification_url=verification_url,
            verification_url_expires_at=verification_url_expires_at,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[Party.party_ref])
        .returning(Party.party_ref)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def get_party(session: AsyncSession, party_ref: str) -> Party | None:
    return await session.get(Party, party_ref, populate_existing=True)


async def reconcile_parties(session: AsyncSession) -> list[str]:
    """Parties to list at Bakkt: every party not CLOSED, and any party with an open transaction
    (whatever its status), in a stable order."""
    not_closed = select(Party.party_ref.label("party_ref")).where(
        Party.status != PartyStatus.CLOSED
    )
    with_open = select(Transaction.party_ref.label("party_ref")).where(Transaction.status.in_(OPEN))
    both = union(not_closed, with_open).subquery()
    statement = select(both.c.party_ref).order_by(both.c.party_ref)
    return list((await session.scalars(statement)).all())


@dataclass(frozen=True, slots=True)
class LimitUsage:
    """The database's clock, the party's own limits (None: the default) and what its counted
    transfers of one direction used in the rolling 24 hours and 30 days before that clock."""

    now: datetime
    per_transaction_cents: int | None
    per_day_cents: int | None
    per_30_days_cents: int | None
    used_day_cents: int
    used_30_days_cents: int


# One round trip: the clock, the limits row and what the party used in both windows. The clock
# is read in this statement, after the caller took the party lock, so it is the same instant the
# windows end at; intervals in hours, because '1 day' follows the session's time zone across a
# DST change and timedelta(days=1) does not.
#
# The sums come from the running totals (`party_limit_usage`, one row per party, direction and
# UTC hour, kept by migration 0012's trigger), not from the party's whole history: every hour
# that lies wholly inside a window is one row, and only the hour the window starts in is summed
# from `transactions` (its rows at or after the window's start), so the result is exact and the
# work is bounded by the number of hours, not of transfers. The hour of a row is
# date_trunc('hour', created_at, 'UTC') here and in the trigger alike.
_LIMIT_USAGE_SQL = """
    SELECT clock.now, l.per_transaction_cents, l.per_day_cents, l.per_30_days_cents,
           hours.day + day_edge.cents AS used_day,
           hours.month + month_edge.cents AS used_30_days{account_columns}
    FROM (SELECT clock_timestamp() AS now) AS clock
    CROSS JOIN LATERAL (
        SELECT clock.now - interval '24 hours' AS day_start,
               date_trunc('hour', clock.now - interval '24 hours', 'UTC') AS day_hour,
               clock.now - interval '720 hours' AS month_start,
               date_trunc('hour', clock.now - interval '720 hours', 'UTC') AS month_hour
    ) AS w
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(u.amount_cents) FILTER (WHERE u.hour > w.day_hour), 0) AS day,
               coalesce(sum(u.amount_cents), 0) AS month
        FROM party_limit_usage AS u
        WHERE u.party_ref = :party_ref AND u.direction = :direction AND u.hour > w.month_hour
    ) AS hours
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(t.amount_cents), 0) AS cents
        FROM transactions AS t
        WHERE t.party_ref = :party_ref AND t.type = :direction AND t.origin = :origin
          AND t.status NOT IN :not_counted
          AND t.created_at >= w.day_start AND t.created_at < w.day_hour + interval '1 hour'
    ) AS day_edge
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(t.amount_cents), 0) AS cents
        FROM transactions AS t
        WHERE t.party_ref = :party_ref AND t.type = :direction AND t.origin = :origin
          AND t.status NOT IN :not_counted
          AND t.created_at >= w.month_start AND t.created_at < w.month_hour + interval '1 hour'
    ) AS month_edge
    LEFT JOIN party_limits AS l ON l.party_ref = :party_ref AND l.direction = :direction{account}
    """
_LIMIT_USAGE = text(_LIMIT_USAGE_SQL.format(account_columns="", account="")).bindparams(
    bindparam("not_counted", expanding=True)
)
_BANK_ACCOUNTS = cast(Table, BankAccount.__table__)
# The same, and the party's current account (`linked_bank_account`) in the same round trip: the
# ACH money path needs both, read after the party lock (issue 11). Not in the lock's statement:
# that statement's snapshot is older than the lock when it had to wait for it, and the sums
# must include what the lock's previous holder committed.
_LIMIT_USAGE_AND_ACCOUNT = (
    text(
        _LIMIT_USAGE_SQL.format(
            account_columns="".join(f", b.{c.name} AS b_{c.name}" for c in _BANK_ACCOUNTS.columns),
            account=(
                "\n    LEFT JOIN bank_accounts AS b"
                " ON b.party_ref = :party_ref AND b.status = 'LINKED'"
            ),
        )
    )
    .bindparams(bindparam("not_counted", expanding=True))
    .columns(
        column("now", DateTime(timezone=True)),
        column("per_transaction_cents", BigInteger()),
        column("per_day_cents", BigInteger()),
        column("per_30_days_cents", BigInteger()),
        column("used_day", BigInteger()),
        column("used_30_days", BigInteger()),
        *(column(f"b_{c.name}", c.type) for c in _BANK_ACCOUNTS.columns),
    )
)


# An hour's total is read while the hour is inside the 30-day window; kept a day longer.
LIMIT_USAGE_KEPT = timedelta(hours=720 + 24)


async def forget_limit_usage(session: AsyncSession, *, now: datetime, limit: int) -> int:
    """Delete up to `limit` running totals of hours no window reaches any more (retention). A
    later move of one of their transfers changes nothing that is read: the trigger's update
    finds no row."""
    statement = text(
        """
        DELETE FROM party_limit_usage
        WHERE (party_ref, direction, hour) IN (
            SELECT party_ref, direction, hour FROM party_limit_usage
            WHERE hour < :before
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        )
        """
    )
    result = await session.execute(statement, {"before": now - LIMIT_USAGE_KEPT, "limit": limit})
    return int(getattr(result, "rowcount", 0) or 0)


_NOT_COUNTED = [str(s) for s in NOT_COUNTED]


def _usage_params(party_ref: str, direction: str) -> dict[str, object]:
    return {
        "party_ref": party_ref,
        "direction": direction,
        "origin": str(TransactionOrigin.PARTNER),
        "not_counted": _NOT_COUNTED,
    }


async def limit_usage(session: AsyncSession, party_ref: str, direction: str) -> LimitUsage:
    """For the limit check, under the party lock the caller holds (so the sums cannot change
    under it)."""
    row = (await session.execute(_LIMIT_USAGE, _usage_params(party_ref, direction))).one()
    return LimitUsage(row[0], row[1], row[2], row[3], int(row[4]), int(row[5]))


async def limit_usage_and_linked_account(
    session: AsyncSession, party_ref: str, direction: str
) -> tuple[LimitUsage, BankAccount | None]:
    """`limit_usage` and `linked_bank_account` in one round trip. The account is a detached
    copy of the row, not the session's: for reading only (the money path's checks)."""
    params = _usage_params(party_ref, direction)
    row = (await session.execute(_LIMIT_USAGE_AND_ACCOUNT, params)).one()
    usage = LimitUsage(row[0], row[1], row[2], row[3], int(row[4]), int(row[5]))
    values = row._mapping
    if values["b_id"] is None:
        return usage, None
    account = BankAccount(**{c.name: values[f"b_{c.name}"] for c in _BANK_ACCOUNTS.columns})
    return usage, account


# --- bank accounts ----------------------------------------------------------------------------


def add_bank_account(session: AsyncSession, account: BankAccount) -> None:
    session.add(account)


async def get_bank_account(
    session: AsyncSession, party_ref: str, account_id: uuid.UUID
) -> BankAccount | None:
    stmt = (
        select(BankAccount)
        .where(BankAccount.id == account_id, BankAccount.party_ref == party_ref)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


async def lock_bank_account(
    session: AsyncSession, party_ref: str, account_id: uuid.UUID
) -> BankAccount | None:
    stmt = (
        select(BankAccount)
        .where(BankAccount.id == account_id, BankAccount.party_ref == party_ref)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


async def lock_bank_account_by_link_ref(session: AsyncSession, link_ref: str) -> BankAccount | None:
    statement = (
        select(BankAccount)
        .where(BankAccount.link_ref == link_ref)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(statement)).scalar_one_or_none()


# As the driver's SQL, for the reason of _TRANSACTION_WITH_HISTORY below: the columns of the
# consumer's view (views.bank_account_out), newest first.
_BANK_ACCOUNTS_SQL = (
    "SELECT id, status, link_method, bank_name, account_mask, account_type, reason_code, "
    "needs_review, created_at, updated_at FROM bank_accounts WHERE party_ref = $1 "
    "ORDER BY created_at DESC, id DESC"
)


async def list_bank_accounts(session: AsyncSession, party_ref: str) -> Sequence[Row[Any]]:
    connection = await session.connection()
    return (await connection.exec_driver_sql(_BANK_ACCOUNTS_SQL, (party_ref,))).all()


_NEWEST_BANK_ACCOUNT = (
    select(BankAccount)
    .where(
        BankAccount.party_ref == bindparam("party_ref"),
        BankAccount.status.in_(bindparam("statuses", expanding=True)),
    )
    .order_by(BankAccount.updated_at.desc(), BankAccount.created_at.desc())
    .limit(1)
)


async def newest_bank_account(
    session: AsyncSession, party_ref: str, statuses: Sequence[str]
) -> BankAccount | None:
    params = {"party_ref": party_ref, "statuses": [str(s) for s in statuses]}
    return (await session.scalars(_NEWEST_BANK_ACCOUNT, params)).one_or_none()


async def newest_sent_link(
    session: AsyncSession, party_ref: str, methods: Sequence[str]
) -> BankAccount | None:
    """The newest PENDING link of one of `methods`."""
    statement = (
        select(BankAccount)
        .where(
            BankAccount.party_ref == party_ref,
            BankAccount.status == BankAccountStatus.PENDING,
            BankAccount.link_method.in_(methods),
        )
        .order_by(BankAccount.created_at.desc(), BankAccount.id.desc())
        .limit(1)
    )
    return (await session.scalars(statement)).one_or_none()


# The reason of the last event of a link removed because Bakkt never received it.
LINK_NOT_SENT = "link_not_sent"


async def delete_bank_account(session: AsyncSession, account_id: uuid.UUID) -> None:
    """Only for a link Bakkt certainly never saw: it leaves no trace, history included, except
    the `bank_account.failed` event that closes the `bank_account.pending` one readers may
    already have (events are never taken back)."""
    await session.execute(
        delete(BankAccountHistory).where(BankAccountHistory.bank_account_id == account_id)
    )
    account = await session.get(BankAccount, account_id)
    if account is not None:
        events.bank_account_removed(session, account, reason_code=LINK_NOT_SENT)
        await session.delete(account)


async def insert_bank_account(
    session: AsyncSession,
    *,
    party_ref: str,
    link_ref: str,
    link_method: str,
    status: str,
    bank_name: str | None,
    account_mask: str | None,
    account_type: str | None,
    reason_code: str | None,
    event_time: datetime,
    now: datetime,
    history_note: str | None = None,
    event_id: str | None = None,
    actor: str | None = None,
) -> bool:
    """A bank account Bakkt linked without our asking; False when the row exists already.
    `actor`: an operator replayed the event that tells of it."""
    statement = (
        insert(BankAccount)
        .values(
            id=uuid.uuid4(),
            party_ref=party_ref,
            link_ref=link_ref,
            link_method=link_method,
            status=status,
            bank_name=bank_name,
            account_mask=account_mask,
            account_type=account_type,
            reason_code=reason_code,
            status_event_time=event_time,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[BankAccount.link_ref])
        .returning(BankAccount.id)
    )
    created = (await session.execute(statement)).scalar_one_or_none()
    if created is None:
        return False
    add_bank_account_history(
        session,
        account_id=created,
        from_status=None,
        to_status=status,
        source=_webhook_or_admin(actor),
        event_id=event_id,
        reason_code=reason_code,
        event_time=event_time,
        note=history_note,
        actor=actor,
    )
    return True


def _webhook_or_admin(actor: str | None) -> str:
    # Bakkt's word about a bank account comes by webhook; an operator replaying it makes the
    # row theirs (app.funding.state.source_of, for transactions).
    return HistorySource.ADMIN if actor is not None else HistorySource.WEBHOOK


# The reason code of a bank account an operator disabled (app/admin/): the one kind of DISABLED
# an operator may enable again; an ACH return's code replaces it.
OPERATOR_DISABLED = "operator_disabled"


async def disable_bank_account(
    session: AsyncSession,
    account_id: uuid.UUID,
    *,
    reason_code: str,
    now: datetime,
    actor: str | None = None,
) -> bool:
    """DISABLED is where an unusable account stays: the first return code that disabled it is
    kept, so a later event cannot re-enable or re-label it. An account an operator disabled
    takes the code, so that no operator can enable an account a return says is unusable."""
    account = await session.get(
        BankAccount, account_id, with_for_update={"key_share": True}, populate_existing=True
    )
    if account is None or (
        account.status == BankAccountStatus.DISABLED and account.reason_code != OPERATOR_DISABLED
    ):
        return False
    add_bank_account_history(
        session,
        account_id=account_id,
        from_status=account.status,
        to_status=BankAccountStatus.DISABLED,
        source=_webhook_or_admin(actor),
        reason_code=reason_code,
        note=f"an ACH return ({reason_code}) says the account cannot be used",
        actor=actor,
    )
    account.status = BankAccountStatus.DISABLED
    account.reason_code = reason_code
    account.updated_at = now
    return True


async def set_link_expiry(
    session: AsyncSession, account_id: uuid.UUID, expires_at: datetime | None
) -> None:
    """When the hosted link page handed out for this account stops working (the latest one, if
    a retry asked for another)."""
    await session.execute(
        update(BankAccount)
        .where(BankAccount.id == account_id)
        .values(link_expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )


LINK_EXPIRED = "link_expired"


async def expire_abandoned_links(
    session: AsyncSession, *, expired_before: datetime, now: datetime, limit: int
) -> list[uuid.UUID]:
    """FAIL hosted-link accounts still PENDING whose link page expired before `expired_before`,
    each with a history row; rows another transaction holds (a webhook linking it right now)
    are skipped and looked at next time. Returns the ids moved."""
    statement = (
        select(BankAccount)
        .where(
            BankAccount.status == BankAccountStatus.PENDING,
            BankAccount.link_method == LinkMethod.HOSTED,
            BankAccount.link_expires_at <= expired_before,
        )
        .order_by(BankAccount.link_expires_at, BankAccount.id)
        .limit(limit)
        .with_for_update(key_share=True, skip_locked=True)
        .execution_options(populate_existing=True)
    )
    accounts = (await session.scalars(statement)).all()
    for account in accounts:
        add_bank_account_history(
            session,
            account_id=account.id,
            from_status=account.status,
            to_status=BankAccountStatus.FAILED,
            source=HistorySource.SYNC,
            reason_code=LINK_EXPIRED,
            note=f"hosted link page expired at {account.link_expires_at:%Y-%m-%dT%H:%M:%SZ} "
            "and Bakkt sent no link event",
            recorded_at=now,
        )
        account.status = BankAccountStatus.FAILED
        account.reason_code = LINK_EXPIRED
        account.updated_at = now
    return [a.id for a in accounts]


async def flag_bank_account_for_review(
    session: AsyncSession, account_id: uuid.UUID, *, now: datetime
) -> bool:
    """Mark an account whose consumer disputed a debit: deposits from it wait for an operator.
    Writes `bank_account.under_review` (the flag is not a status, so it has no history row)."""
    statement = (
        update(BankAccount)
        .where(BankAccount.id == account_id, BankAccount.needs_review.is_(False))
        .values(needs_review=True, updated_at=now)
        .returning(BankAccount.id)
        # The account's event renders the row from the session: refresh a copy it holds.
        .execution_options(synchronize_session="fetch")
    )
    flagged = (await session.execute(statement)).scalar_one_or_none()
    if flagged is None:
        return False
    events.bank_account_event(session, flagged, EventType.BANK_ACCOUNT_UNDER_REVIEW)
    return True


async def get_bank_account_by_id(
    session: AsyncSession, account_id: uuid.UUID
) -> BankAccount | None:
    statement = (
        select(BankAccount)
        .where(BankAccount.id == account_id)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(statement)).one_or_none()


async def lock_bank_account_by_id(
    session: AsyncSession, account_id: uuid.UUID
) -> BankAccount | None:
    """The bank account's row lock, whichever party it belongs to (operators' actions)."""
    statement = (
        select(BankAccount)
        .where(BankAccount.id == account_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(statement)).one_or_none()


def move_bank_account(
    session: AsyncSession,
    account: BankAccount,
    to_status: str,
    *,
    source: str,
    reason_code: str | None,
    note: str | None,
    now: datetime,
    actor: str | None = None,
) -> None:
    """Set a locked account's status and reason code, with its history row."""
    add_bank_account_history(
        session,
        account_id=account.id,
        from_status=account.status,
        to_status=to_status,
        source=source,
        reason_code=reason_code,
        note=note,
        actor=actor,
    )
    account.status = to_status
    account.reason_code = reason_code
    account.updated_at = now


def add_bank_account_history(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    from_status: str | None,
    to_status: str,
    source: str,
    event_id: str | None = None,
    reason_code: str | None = None,
    note: str | None = None,
    event_time: datetime | None = None,
    recorded_at: datetime | None = None,
    actor: str | None = None,
) -> None:
    """The one writer of bank-account history: every move of a bank account's status adds
    its row here, in the transaction that makes the move, and its event (`app.events`, the
    account rendered as the transaction leaves it). `actor`: the operator behind a row of
    source `admin`."""
    row = BankAccountHistory(
        bank_account_id=account_id,
        from_status=from_status,
        to_status=to_status,
        source=source,
        event_id=event_id,
        reason_code=reason_code,
        note=note,
        event_time=event_time,
        actor=actor,
    )
    if recorded_at is not None:
        row.recorded_at = recorded_at
    session.add(row)
    events.bank_account_moved(session, account_id, to_status)


_BANK_ACCOUNT_WITH_HISTORY = (
    select(BankAccount, BankAccountHistory)
    .outerjoin(BankAccountHistory, BankAccountHistory.bank_account_id == BankAccount.id)
    .where(BankAccount.id == bindparam("id"), BankAccount.party_ref == bindparam("party_ref"))
    .order_by(BankAccountHistory.id)
    .execution_options(populate_existing=True)
)


async def bank_account_with_history(
    session: AsyncSession, party_ref: str, account_id: uuid.UUID
) -> tuple[BankAccount, list[BankAccountHistory]] | None:
    """One of the party's bank accounts and its history, in one statement (one snapshot)."""
    params = {"id": account_id, "party_ref": party_ref}
    rows = (await session.execute(_BANK_ACCOUNT_WITH_HISTORY, params)).all()
    if not rows:
        return None
    return rows[0][0], [h for _, h in rows if h is not None]


async def bank_account_history(
    session: AsyncSession, account_id: uuid.UUID
) -> Sequence[BankAccountHistory]:
    """For the operators' view (app/admin); the consumer API reads an account with its history
    in one statement instead."""
    statement = (
        select(BankAccountHistory)
        .where(BankAccountHistory.bank_account_id == account_id)
        .order_by(BankAccountHistory.id)
    )
    return (await session.scalars(statement)).all()


async def linked_bank_account(session: AsyncSession, party_ref: str) -> BankAccount | None:
    """The party's current account: the one Bakkt moves its ACH money through."""
    statement = (
        select(BankAccount)
        .where(BankAccount.party_ref == party_ref, BankAccount.status == BankAccountStatus.LINKED)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(statement)).one_or_none()


async def supersede_linked(
    session: AsyncSession,
    *,
    party_ref: str,
    new_link_ref: str,
    event_time: datetime,
    event_id: str | None,
    now: datetime,
    actor: str | None = None,
) -> BankAccount | None:
    """Make room for the link `new_link_ref` to become the party's LINKED account, as Bakkt
    does when a link succeeds: the LINKED one becomes REPLACED, with a history row. When the
    LINKED one was linked later than `event_time` (its event came first), it stays and is
    returned: then it is the new one that Bakkt has replaced. Must run before the new one is
    set LINKED (one LINKED per party is a unique index)."""
    statement = (
        select(BankAccount)
        .where(
            BankAccount.party_ref == party_ref,
            BankAccount.status == BankAccountStatus.LINKED,
            BankAccount.link_ref != new_link_ref,
        )
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    current = (await session.scalars(statement)).one_or_none()
    if current is None:
        return None
    if current.status_event_time is not None and current.status_event_time > event_time:
        return current
    add_bank_account_history(
        session,
        account_id=current.id,
        from_status=current.status,
        to_status=BankAccountStatus.REPLACED,
        source=_webhook_or_admin(actor),
        event_id=event_id,
        event_time=event_time,
        note=f"replaced by the link {new_link_ref}, which Bakkt completed later",
        actor=actor,
    )
    current.status = BankAccountStatus.REPLACED
    current.updated_at = now
    await session.flush()
    return None


# --- transactions -----------------------------------------------------------------------------


_TRANSACTIONS_TABLE = cast(Table, Transaction.__table__)
_HISTORY = cast(Table, TransactionHistory.__table__)
_INTENT_COLUMNS = [c.name for c in _TRANSACTIONS_TABLE.columns]
# A history row's columns as `state` fills them (its id and recorded_at are the database's).
HISTORY_COLUMNS = (
    "from_status",
    "to_status",
    "source",
    "event_id",
    "reason_code",
    "applied",
    "note",
    "event_time",
    "actor",
)
# The consumer's transaction written as an intent and its idempotency claim pointed at it, in one
# statement: the row is selected FROM the claim's update (idempotency's INTENT_CLAIM), so a claim
# that another holder pointed at its own intent first writes nothing.
_INTENT_ROW = (
    insert(_TRANSACTIONS_TABLE)
    .from_select(
        _INTENT_COLUMNS,
        select(
            *(
                bindparam(f"t_{name}", type_=_TRANSACTIONS_TABLE.c[name].type)
                for name in _INTENT_COLUMNS
            )
        ).select_from(INTENT_CLAIM),
    )
    .returning(_TRANSACTIONS_TABLE.c.id)
)
_INSERT_INTENT = _INTENT_ROW.add_cte(INTENT_CLAIM)


def _history_row(after: CTE, prefix: str) -> CTE:
    """The history row of the change `after` made (its transaction's id from it), as a CTE:
    written only when `after` yields a row. Parameters: `prefix` + each of HISTORY_COLUMNS."""
    row = select(
        after.c.id,
        *(bindparam(f"{prefix}{c}", type_=_HISTORY.c[c].type) for c in HISTORY_COLUMNS),
    ).select_from(after)
    return (
        insert(_HISTORY)
        .from_select(["transaction_id", *HISTORY_COLUMNS], row)
        .returning(_HISTORY.c.id)
        .cte(f"{prefix}history")
    )


# The same, and the intent's first history row and its `transaction.created` event with it
# (issue 11: three statements were one INSERT each, two of them the commit's flush and outbox).
_INTENT_CTE = _INTENT_ROW.cte("intent")
_INTENT_WITH_HISTORY = select(_INTENT_CTE.c.id).add_cte(
    _history_row(_INTENT_CTE, "h_"),
    events_repo.insert_event_cte("created", after=_INTENT_CTE),
)


def history_params(history: TransactionHistory, prefix: str = "h_") -> dict[str, object]:
    return {f"{prefix}{c}": getattr(history, c) for c in HISTORY_COLUMNS}


async def insert_intent(
    session: AsyncSession,
    txn: Transaction,
    *,
    key_id: int,
    creation: tuple[TransactionHistory, dict[str, Any]] | None = None,
) -> bool:
    """Write `txn` (every column set, not yet in the session) and point claim `key_id` at it,
    with `creation` (its first history row and its event, taken off the session) in the same
    statement; then `txn` is in the session as the persistent row it now is. False, and
    nothing written, when the claim has an intent already."""
    params: dict[str, object] = {f"t_{name}": getattr(txn, name) for name in _INTENT_COLUMNS}
    params |= {"key_id": key_id, "transaction_id": txn.id}
    statement: Executable = _INSERT_INTENT
    if creation is not None:
        history, event = creation
        params |= history_params(history) | events_repo.event_params("created", event)
        statement = _INTENT_WITH_HISTORY
    if (await session.execute(statement, params)).scalar_one_or_none() is None:
        return False
    make_transient_to_detached(txn)
    session.add(txn)
    return True


# A move of the API's own (the outcome of its call to Bakkt) under the row lock the caller
# holds: the row's changed columns, the history row, the event when the move applied, and the
# idempotency key's stored answer, in one statement instead of the flush's UPDATE and INSERT,
# the key's UPDATE and the outbox INSERT (issue 11). Its count is 1 when the key took our
# answer, 0 when another holder of it had finished first.
OUTCOME_COLUMNS = (
    "status",
    "updated_at",
    "status_event_time",
    "reason_code",
    "reason_description",
    "next_check_at",
    "submit_attempts",
)
_UNCHANGED = and_(
    *(
        _TRANSACTIONS_TABLE.c[name].is_not_distinct_from(
            bindparam(f"g_{name}", type_=_TRANSACTIONS_TABLE.c[name].type)
        )
        for name in _INTENT_COLUMNS
    )
)


def _outcome(*, guarded: bool, with_event: bool) -> Select[Any]:
    move = update(_TRANSACTIONS_TABLE).where(_TRANSACTIONS_TABLE.c.id == bindparam("m_id"))
    if guarded:
        move = move.where(_UNCHANGED)
    moved = (
        move.values(
            {c: bindparam(f"m_{c}", type_=_TRANSACTIONS_TABLE.c[c].type) for c in OUTCOME_COLUMNS}
        )
        .returning(_TRANSACTIONS_TABLE.c.id)
        .cte("move")
    )
    finished = finish_claim(after=moved if guarded else None)
    written: list[CTE] = [_history_row(moved, "mh_")]
    if with_event:
        written.append(events_repo.insert_event_cte("moved", after=moved))
    return select(
        select(func.count()).select_from(moved).scalar_subquery(),
        select(func.count()).select_from(finished).scalar_subquery(),
    ).add_cte(*written)


# Under the caller's row lock; and without one, applied only while the row is still exactly as
# the caller saw it (`unchanged_from`): the UPDATE waits for a writer holding the row and then
# re-checks that against the row it committed, so the move was judged on the row it applies to.
_OUTCOMES = {
    (guarded, with_event): _outcome(guarded=guarded, with_event=with_event)
    for guarded in (False, True)
    for with_event in (False, True)
}


def transaction_values(txn: Transaction) -> dict[str, object] | None:
    """Every column of `txn` as the session holds it, for `record_outcome`'s `unchanged_from`;
    None when one is not loaded."""
    loaded = sa_inspect(txn).dict
    if any(name not in loaded for name in _INTENT_COLUMNS):
        return None
    return {name: loaded[name] for name in _INTENT_COLUMNS}


async def record_outcome(
    session: AsyncSession,
    txn: Transaction,
    history: TransactionHistory,
    event: dict[str, Any] | None,
    finish: dict[str, Any],
    *,
    unchanged_from: dict[str, object] | None = None,
) -> bool | None:
    """Write what `state.transition` did to `txn`: its columns, its history row and its event
    (None when the move was only recorded), with the key's answer (`finish`: idempotency's
    `finish_params`). True when the key took the answer, False when another holder's was
    there first. Without `unchanged_from` the caller holds the row lock; with it, nothing is
    written, and None returned, unless the row is still exactly that."""
    params: dict[str, Any] = {f"m_{c}": getattr(txn, c) for c in OUTCOME_COLUMNS}
    params |= {"m_id": txn.id} | history_params(history, "mh_") | finish
    if event is not None:
        params |= events_repo.event_params("moved", event)
    if unchanged_from is not None:
        params |= {f"g_{name}": value for name, value in unchanged_from.items()}
    statement = _OUTCOMES[(unchanged_from is not None, event is not None)]
    row = (await session.execute(statement, params)).one()
    moved, finished = row[0], row[1]
    if not moved:
        return None
    return bool(finished)


_GET_TRANSACTION = (
    select(Transaction)
    .where(Transaction.id == bindparam("id"), Transaction.party_ref == bindparam("party_ref"))
    .execution_options(populate_existing=True)
)


async def get_transaction(
    session: AsyncSession, party_ref: str, transaction_id: uuid.UUID
) -> Transaction | None:
    params = {"id": transaction_id, "party_ref": party_ref}
    return (await session.scalars(_GET_TRANSACTION, params)).one_or_none()


async def get_transaction_by_id(
    session: AsyncSession, transaction_id: uuid.UUID
) -> Transaction | None:
    statement = (
        select(Transaction)
        .where(Transaction.id == transaction_id)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(statement)).one_or_none()


_LOCK_TRANSACTION = (
    select(Transaction)
    .where(Transaction.id == bindparam("id"))
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)
)
_LOCK_TRANSACTION_BY_REF = (
    select(Transaction)
    .where(Transaction.bakkt_ref == bindparam("bakkt_ref"))
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)
)
_TRANSACTIONS = cast(Table, Transaction.__table__)
_EVENTS = cast(Table, WebhookEvent.__table__)
_ORPHAN = _TRANSACTIONS.alias("orphan")
_RELATED = _TRANSACTIONS.alias("related")
# A Bakkt-started row (fee, adjustment) whose webhook named this transaction as its related
# transfer and that is not linked yet: it came before this transaction was known to us.
_HAS_ORPHANS = (
    exists()
    .where(
        _EVENTS.c.related_ref == Transaction.bakkt_ref,
        _ORPHAN.c.bakkt_ref == _EVENTS.c.transaction_ref,
        _ORPHAN.c.related_transaction_id.is_(None),
        _ORPHAN.c.origin == TransactionOrigin.BAKKT,
        _ORPHAN.c.id != Transaction.id,
    )
    .label("has_orphans")
)
_LOCK_TRANSACTION_BY_REF_WITH_ORPHANS = (
    select(Transaction, _HAS_ORPHANS)
    .where(Transaction.bakkt_ref == bindparam("bakkt_ref"))
    .with_for_update(key_share=True, of=Transaction)
    .execution_options(populate_existing=True)
)


async def lock_transaction(session: AsyncSession, transaction_id: uuid.UUID) -> Transaction | None:
    """The row lock every status move is made under, whoever makes it."""
    return (await session.scalars(_LOCK_TRANSACTION, {"id": transaction_id})).one_or_none()


async def lock_transaction_by_ref(session: AsyncSession, bakkt_ref: str) -> Transaction | None:
    """The same lock as `lock_transaction`, found by the ref Bakkt knows the transaction by."""
    params = {"bakkt_ref": bakkt_ref}
    return (await session.scalars(_LOCK_TRANSACTION_BY_REF, params)).one_or_none()


async def lock_transaction_by_ref_with_orphans(
    session: AsyncSession, bakkt_ref: str
) -> tuple[Transaction, bool] | None:
    """`lock_transaction_by_ref`, and whether fees or adjustments wait to be linked to it, in
    the same round trip: nearly every event has none, so `link_orphan_relations` (an UPDATE
    joining the events) runs only for the few that do. One committed while this statement
    waited for the lock is not seen here; `rematch_parked`'s sweep links it."""
    params = {"bakkt_ref": bakkt_ref}
    row = (await session.execute(_LOCK_TRANSACTION_BY_REF_WITH_ORPHANS, params)).one_or_none()
    if row is None:
        return None
    return row[0], bool(row[1])


async def transaction_id_by_ref(session: AsyncSession, bakkt_ref: str) -> uuid.UUID | None:
    statement = select(Transaction.id).where(Transaction.bakkt_ref == bakkt_ref)
    return (await session.execute(statement)).scalar_one_or_none()


async def list_transactions(
    session: AsyncSession,
    party_ref: str,
    *,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
    statuses: Sequence[str],
    types: Sequence[str],
    created_from: datetime | None,
    created_to: datetime | None,
) -> Sequence[Transaction]:
    """Newest first, keyset-paginated on (created_at, id): `before` is the last row seen."""
    stmt = select(Transaction).where(Transaction.party_ref == party_ref)
    if before is not None:
        stmt = stmt.where(tuple_(Transaction.created_at, Transaction.id) < tuple_(*before))
    if statuses:
        stmt = stmt.where(Transaction.status.in_(statuses))
    if types:
        stmt = stmt.where(Transaction.type.in_(types))
    if created_from is not None:
        stmt = stmt.where(Transaction.created_at >= created_from)
    if created_to is not None:
        stmt = stmt.where(Transaction.created_at < created_to)
    stmt = stmt.order_by(Transaction.created_at.desc(), Transaction.id.desc()).limit(limit)
    return (await session.scalars(stmt)).all()


# By hand, run as the driver's SQL: the ORM's statement execution and its loading of two
# entities per row cost several times the round trip of this, the most frequent read (the
# detail poll). The columns are what the consumer's view shows (views.transaction_detail).
_TRANSACTION_WITH_HISTORY = (
    "SELECT t.id, t.type, t.method, t.status, t.amount_cents, t.currency, t.reason_code, "
    "t.created_at, t.updated_at, h.from_status AS h_from_status, h.to_status AS h_to_status, "
    "h.source AS h_source, h.reason_code AS h_reason_code, h.event_id AS h_event_id, "
    "h.applied AS h_applied, h.recorded_at AS h_recorded_at "
    "FROM transactions AS t LEFT OUTER JOIN transaction_history AS h "
    "ON h.transaction_id = t.id "
    "WHERE t.id = $1 AND t.party_ref = $2 "
    "ORDER BY h.recorded_at, h.id"
)


async def transaction_with_history(
    session: AsyncSession, party_ref: str, transaction_id: uuid.UUID
) -> Sequence[Row[Any]]:
    """One of the party's transactions and its history, oldest first, in one statement (so
    one snapshot: the history explains the status shown): a row per history entry (its
    columns `h_*`, all null for a transaction without history), none for an unknown id."""
    connection = await session.connection()
    result = await connection.exec_driver_sql(
        _TRANSACTION_WITH_HISTORY, (transaction_id, party_ref)
    )
    return result.all()


async def history(session: AsyncSession, transaction_id: uuid.UUID) -> Sequence[TransactionHistory]:
    """For the operators' view (app/admin); the consumer API reads a transaction with its
    history in one statement instead."""
    stmt = (
        select(TransactionHistory)
        .where(TransactionHistory.transaction_id == transaction_id)
        .order_by(TransactionHistory.recorded_at, TransactionHistory.id)
    )
    return (await session.scalars(stmt)).all()


async def withheld_words(
    session: AsyncSession, transaction_id: uuid.UUID, *, note_prefix: str
) -> Sequence[TransactionHistory]:
    """The words of Bakkt's a hold kept from the transaction (`bakkt_sync._hold`), in Bakkt's
    order: by the time of each, then as recorded."""
    statement = (
        select(TransactionHistory)
        .where(
            TransactionHistory.transaction_id == transaction_id,
            TransactionHistory.applied.is_(False),
            TransactionHistory.note.startswith(note_prefix, autoescape=True),
        )
        .order_by(TransactionHistory.event_time.asc().nulls_first(), TransactionHistory.id)
    )
    return (await session.scalars(statement)).all()


async def history_has_event(session: AsyncSession, bakkt_ref: str, event_id: str) -> bool:
    """Whether the transaction Bakkt knows by `bakkt_ref` has a history row of this event."""
    statement = select(
        exists().where(
            TransactionHistory.transaction_id == Transaction.id,
            Transaction.bakkt_ref == bakkt_ref,
            TransactionHistory.event_id == event_id,
        )
    )
    return bool((await session.execute(statement)).scalar_one())


# Spelled as the partial indexes' predicates, so the planner matches them to these lists.
_IS_OPEN = text("transactions.status IN ('SUBMITTING', 'UNKNOWN', 'PENDING')")
_IS_HELD = text("transactions.held_for_review")


async def list_across_parties(
    session: AsyncSession,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    statuses: Sequence[str] = (),
    party_ref: str | None = None,
    open_only: bool = False,
    held_only: bool = False,
    created_before: datetime | None = None,
    unsettled_before: datetime | None = None,
) -> Sequence[Transaction]:
    """Every party's transactions, oldest first, keyset-paginated on (created_at, id): `after`
    is the last row seen. `open_only`: SUBMITTING, UNKNOWN or PENDING; `unsettled_before`:
    UNKNOWN, or SUBMITTING created before it (an outcome nobody is waiting for any more)."""
    stmt = select(Transaction)
    if open_only:
        stmt = stmt.where(_IS_OPEN)
    if held_only:
        stmt = stmt.where(_IS_HELD)
    if statuses:
        stmt = stmt.where(Transaction.status.in_(statuses))
    if party_ref is not None:
        stmt = stmt.where(Transaction.party_ref == party_ref)
    if created_before is not None:
        stmt = stmt.where(Transaction.created_at <= created_before)
    if unsettled_before is not None:
        stmt = stmt.where(
            (Transaction.status == TransactionStatus.UNKNOWN)
            | (
                (Transaction.status == TransactionStatus.SUBMITTING)
                & (Transaction.created_at <= unsettled_before)
            )
        )
    if after is not None:
        stmt = stmt.where(tuple_(Transaction.created_at, Transaction.id) > tuple_(*after))
    stmt = stmt.order_by(Transaction.created_at, Transaction.id).limit(limit)
    return (await session.scalars(stmt)).all()


async def insert_bakkt_transaction(
    session: AsyncSession,
    *,
    party_ref: str,
    bakkt_ref: str,
    type_: str,
    method: str | None,
    status: str,
    amount_cents: int,
    currency: str,
    reason_code: str | None,
    reason_description: str | None,
    related_transaction_id: uuid.UUID | None,
    status_event_time: datetime,
    created_at: datetime,
    now: datetime,
) -> uuid.UUID | None:
    """A transaction Bakkt started; None when it exists already (a concurrent event, or its
    webhook before reconciliation, created it first)."""
    statement = (
        insert(Transaction)
        .values(
            id=uuid.uuid4(),
            party_ref=party_ref,
            type=type_,
            method=method,
            origin=TransactionOrigin.BAKKT,
            status=status,
            amount_cents=amount_cents,
            currency=currency,
            reason_code=reason_code,
            reason_description=reason_description,
            bakkt_ref=bakkt_ref,
            related_transaction_id=related_transaction_id,
            status_event_time=status_event_time,
            created_at=created_at,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[Transaction.bakkt_ref])
        .returning(Transaction.id)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def link_relation(
    session: AsyncSession, *, bakkt_ref: str, related_id: uuid.UUID, now: datetime
) -> bool:
    """Point a Bakkt-started row (a fee, an adjustment) at the transfer it concerns, once."""
    statement = (
        update(Transaction)
        .where(
            Transaction.bakkt_ref == bakkt_ref,
            Transaction.origin == TransactionOrigin.BAKKT,
            Transaction.related_transaction_id.is_(None),
            Transaction.id != related_id,
        )
        .values(related_transaction_id=related_id, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(statement)
    return bool(getattr(result, "rowcount", 0))


_ORPHAN_CONDITIONS = (
    _EVENTS.c.transaction_ref == _TRANSACTIONS.c.bakkt_ref,
    _EVENTS.c.related_ref == _RELATED.c.bakkt_ref,
    _TRANSACTIONS.c.related_transaction_id.is_(None),
    _TRANSACTIONS.c.origin == TransactionOrigin.BAKKT,
    _RELATED.c.id != _TRANSACTIONS.c.id,
)
# Built once, one alias for the life of the process: an alias made per call is a new object
# SQLAlchemy can neither cache-key cheaply nor find in its compiled cache.
_LINK_ORPHANS_OF = (
    update(_TRANSACTIONS)
    .where(*_ORPHAN_CONDITIONS, _EVENTS.c.related_ref == bindparam("p_related_ref"))
    .values(related_transaction_id=_RELATED.c.id, updated_at=bindparam("p_now"))
)
_LINK_ORPHANS_RECENT = (
    update(_TRANSACTIONS)
    .where(
        *_ORPHAN_CONDITIONS,
        _EVENTS.c.related_ref.is_not(None),
        _EVENTS.c.received_at >= func.now() - ORPHAN_WINDOW,
    )
    .values(related_transaction_id=_RELATED.c.id, updated_at=bindparam("p_now"))
)


async def link_orphan_relations(
    session: AsyncSession, *, related_ref: str | None = None, now: datetime
) -> int:
    """Point Bakkt-started rows (fees, adjustments) at the transfer their webhook named, once that
    transfer is known. `related_ref` narrows it to one transfer; None sweeps the events of the
    last ORPHAN_WINDOW (bounded work on every run; older gaps are reconciliation's)."""
    if related_ref is not None:
        params: dict[str, object] = {"p_related_ref": related_ref, "p_now": now}
        result = await session.execute(_LINK_ORPHANS_OF, params)
    else:
        result = await session.execute(_LINK_ORPHANS_RECENT, {"p_now": now})
    return int(getattr(result, "rowcount", 0) or 0)


# --- recovery's claims ------------------------------------------------------------------------


async def _claim(
    session: AsyncSession,
    due: ColumnElement[bool],
    *,
    now: datetime,
    lease_until: datetime,
    limit: int,
) -> Sequence[Transaction]:
    """Lock up to `limit` due rows nobody else holds and push their next check past the lease,
    in the caller's (short) transaction: once it commits, other workers skip them until then."""
    ids = (
        select(Transaction.id)
        .where(
            due,
            Transaction.held_for_review.is_(False),
            Transaction.next_check_at.is_(None) | (Transaction.next_check_at <= now),
        )
        .order_by(Transaction.next_check_at.asc().nulls_first(), Transaction.id)
        .limit(limit)
        .with_for_update(skip_locked=True, key_share=True)
        .scalar_subquery()
    )
    statement = (
        update(Transaction)
        .where(Transaction.id.in_(ids))
        .values(next_check_at=lease_until)
        .returning(Transaction)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return (await session.scalars(statement)).all()


async def claim_unsettled(
    session: AsyncSession,
    *,
    now: datetime,
    submitting_before: datetime,
    lease_until: datetime,
    limit: int,
) -> Sequence[Transaction]:
    """UNKNOWN transactions that are due, and SUBMITTING ones older than the grace period (their
    request died between writing the intent and hearing Bakkt)."""
    due = (Transaction.status == TransactionStatus.UNKNOWN) | (
        (Transaction.status == TransactionStatus.SUBMITTING)
        & (Transaction.created_at <= submitting_before)
    )
    return await _claim(session, due, now=now, lease_until=lease_until, limit=limit)


async def claim_pending(
    session: AsyncSession, *, now: datetime, lease_until: datetime, limit: int
) -> Sequence[Transaction]:
    due = Transaction.status == TransactionStatus.PENDING
    return await _claim(session, due, now=now, lease_until=lease_until, limit=limit)


async def open_transaction_stats(
    session: AsyncSession,
) -> tuple[dict[str, int], float | None]:
    """Open transactions by status, and the age in seconds of the oldest (the metrics scrape).
    Only open rows are read, through the partial index on them: terminal ones are counted by
    nobody here, so the cost follows what is in flight, not the table's size."""
    statement = (
        select(
            Transaction.status,
            func.count(),
            func.extract("epoch", func.clock_timestamp() - func.min(Transaction.created_at)),
        )
        # Spelled as the partial index's predicate, literally: a bound parameter list would
        # not let the planner prove that the index covers the query under a generic plan.
        .where(text("transactions.status IN ('SUBMITTING', 'UNKNOWN', 'PENDING')"))
        .group_by(Transaction.status)
    )
    counts: dict[str, int] = {}
    oldest: float | None = None
    for status, n, age in (await session.execute(statement)).all():
        counts[str(status)] = int(n)
        if age is not None:
            oldest = max(oldest or 0.0, float(age))
    return counts, oldest
