"""What an operator may see and do across every party: the rules and transaction boundaries of
the admin API and of `fiat-onramp admin`, which both call this.

Every action writes its history row (source `admin`, with the actor) in the transaction that
makes it, through the functions that own each move: `state.transition` and
`bakkt_sync.release_hold` for transactions, `funding.repository.move_bank_account` for bank
accounts, the webhook receiver's own apply for a replay, the settle path for a forced sync. No
database transaction is open while Bakkt is called.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin import errors, schemas
from app.alerts import repository as alerts_repo
from app.alerts import service as alerts
from app.alerts.models import OperatorAlert
from app.alerts.service import AlertSpec, Resolution
from app.bakkt import BakktClient, BakktError
from app.config import Settings
from app.core.clock import db_now, utcnow
from app.core.metrics import METRICS
from app.core.money import format_dollars
from app.errors import Conflict
from app.funding import bakkt_sync
from app.funding import repository as repo
from app.funding.errors import (
    BankAccountNotFound,
    BankAccountNotLinked,
    InvalidCursor,
    TransactionNotFound,
    unavailable_error,
)
from app.funding.models import (
    BankAccount,
    BankAccountHistory,
    BankAccountStatus,
    HistorySource,
    Transaction,
    TransactionHistory,
    TransactionMethod,
    TransactionType,
)
from app.funding.models import TransactionStatus as Status
from app.funding.service import decode_cursor, encode_cursor
from app.funding.state import OPEN, transition
from app.recovery import settle
from app.recovery.jobs import ClaimedTransaction, JobRun
from app.recovery.sweep import settlement_deadline
from app.webhooks import repository as webhooks_repo
from app.webhooks import service as webhooks
from app.webhooks.models import WebhookEvent
from app.webhooks.service import ReplayRefused

# Rows the overdue bucket reads per round trip while it looks for a page's worth: only ACH
# deposits created in the last weekend's worth of days can pass the SQL bound and still be
# inside their window, so few rounds are ever needed.
_OVERDUE_CHUNK = 200

_REFUSALS: dict[ReplayRefused, type[Conflict]] = {
    ReplayRefused.APPLIED: errors.WebhookEventApplied,
    ReplayRefused.RECORDED: errors.WebhookEventRecorded,
    ReplayRefused.BODY_CLEARED: errors.WebhookEventBodyCleared,
    ReplayRefused.UNREADABLE: errors.WebhookEventUnreadable,
}

SessionFactory = async_sessionmaker[AsyncSession]


class AdminService:
    def __init__(self, factory: SessionFactory, bakkt: BakktClient, settings: Settings) -> None:
        self.factory = factory
        self.bakkt = bakkt
        self.settings = settings

    # --- transactions -------------------------------------------------------------------------

    async def list_transactions(
        self, q: schemas.AdminTransactionQuery
    ) -> schemas.AdminTransactionPage:
        after = decode_cursor(q.cursor) if q.cursor else None
        async with self.factory() as session:
            now = await db_now(session)
            if q.bucket is schemas.Bucket.OVERDUE:
                rows = await self._overdue(session, q, now, after)
            else:
                rows = await self._page(session, q, now, after)
        page = rows[: q.limit]
        return schemas.AdminTransactionPage(
            items=[self._transaction_out(t) for t in page],
            next_cursor=encode_cursor(page[-1]) if len(rows) > q.limit else None,
        )

    async def _page(
        self,
        session: AsyncSession,
        q: schemas.AdminTransactionQuery,
        now: datetime,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> Sequence[Transaction]:
        bucket = q.bucket
        grace = timedelta(seconds=self.settings.recovery_submitting_grace)
        return await repo.list_across_parties(
            session,
            limit=q.limit + 1,
            after=after,
            statuses=[str(s) for s in q.status],
            party_ref=q.party_ref,
            # Every bucket but `held` is open transactions, as are statuses among the open
            # ones: saying so lets the planner take the partial index of open transactions.
            open_only=bucket in (schemas.Bucket.STUCK, schemas.Bucket.UNKNOWN)
            or (bool(q.status) and set(q.status) <= OPEN),
            held_only=bucket is schemas.Bucket.HELD,
            created_before=(
                now - timedelta(hours=q.stuck_after_hours)
                if bucket is schemas.Bucket.STUCK
                else None
            ),
            unsettled_before=now - grace if bucket is schemas.Bucket.UNKNOWN else None,
        )

    async def _overdue(
        self,
        session: AsyncSession,
        q: schemas.AdminTransactionQuery,
        now: datetime,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> Sequence[Transaction]:
        """PENDING past `settlement_deadline`, judged row by row in Python by the sweep's own
        calendar; SQL only bounds the rows by the shortest window any transaction has."""
        statuses = {str(s) for s in q.status}
        if statuses and str(Status.PENDING) not in statuses:
            return []
        cfg = self.settings
        shortest = min(
            timedelta(days=cfg.overdue_ach_deposit_business_days)
            + timedelta(hours=cfg.overdue_ach_deposit_margin_hours),
            timedelta(hours=cfg.overdue_wire_hours),
            timedelta(hours=cfg.overdue_ach_withdrawal_hours),
        )
        found: list[Transaction] = []
        cursor = after
        while len(found) <= q.limit:
            rows = await repo.list_across_parties(
                session,
                limit=_OVERDUE_CHUNK,
                after=cursor,
                statuses=[str(Status.PENDING)],
                party_ref=q.party_ref,
                open_only=True,
                created_before=now - shortest,
            )
            for txn in rows:
                if now >= settlement_deadline(txn.type, txn.method, txn.created_at, cfg):
                    found.append(txn)
                    if len(found) > q.limit:
                        break
            if len(rows) < _OVERDUE_CHUNK:
                break
            cursor = (rows[-1].created_at, rows[-1].id)
        return found

    async def get_transaction(self, txn_id: uuid.UUID) -> schemas.AdminTransactionDetail:
        async with self.factory() as session:
            txn = await repo.get_transaction_by_id(session, txn_id)
            if txn is None:
                raise TransactionNotFound("No transaction with this id.")
            return await self._detail(session, txn)

    async def sync_transaction(
        self, txn_id: uuid.UUID, *, actor: str
    ) -> schemas.TransactionActionOut:
        """Ask Bakkt about one transaction now and act on the answer as recovery would: adopt
        Bakkt's record (`bakkt_sync` through the settle path), or, for an outcome still unknown
        that Bakkt never received, re-send it with its own key or fail it by the same rules. A
        SUBMITTING transaction inside its grace period is refused: its consumer's request may
        still be talking to Bakkt."""
        async with self.factory() as session:
            txn = await repo.get_transaction_by_id(session, txn_id)
            if txn is None:
                raise TransactionNotFound("No transaction with this id.")
            now = await db_now(session)
            before = {h.id for h in await repo.history(session, txn_id)}
            claimed = ClaimedTransaction.of(txn)
        grace = timedelta(seconds=self.settings.recovery_submitting_grace)
        age = now - claimed.created_at
        if claimed.status == Status.SUBMITTING and age < grace:
            wait = max(1, math.ceil((grace - age).total_seconds()))
            raise errors.TransactionInFlight(
                f"The transaction was written {int(age.total_seconds())} s ago and its "
                f"request may still be in flight; sync it after {wait} s.",
                retry_after=wait,
            )
        try:
            found = await self.bakkt.get_transaction(claimed.party_ref, claimed.bakkt_ref)
        except BakktError as exc:
            # Nothing was learnt, so nothing is written: the operator retries.
            raise unavailable_error(exc) from None
        run = JobRun(self.factory, self.bakkt, self.settings, METRICS, now, actor=actor)
        missing = False
        if found is not None:
            verdict = await settle.adopt(run, claimed, found)
            summary = f"Bakkt reports {found.status} ({verdict or 'gone'})"
        elif claimed.status in repo.UNSETTLED:
            await settle.not_at_bakkt(run, claimed)
            summary = "Bakkt has no record of it"
        else:
            missing = True
            summary = "Bakkt has no record of it"
        async with self.factory() as session:
            locked = await repo.lock_transaction(session, txn_id)
            if locked is None:  # pragma: no cover - transactions are never deleted
                raise TransactionNotFound("No transaction with this id.")
            rows = await repo.history(session, txn_id)
            if not any(h.id not in before and h.source == HistorySource.ADMIN for h in rows):
                # Nothing moved and nothing was recorded by the path taken: the sync itself is.
                transition(
                    session,
                    locked,
                    Status(locked.status),
                    source=HistorySource.ADMIN,
                    note=f"forced sync: {summary}",
                    actor=actor,
                )
            if missing:
                await alerts.add_alert_once(
                    session,
                    AlertSpec(
                        "transaction_missing_at_bakkt",
                        f"transaction {locked.id}",
                        f"{locked.bakkt_ref} is {locked.status} here but Bakkt has no such "
                        "transaction.",
                        {"transactionId": str(locked.id), "bakktRef": locked.bakkt_ref},
                    ),
                )
            await session.commit()
            detail = await self._detail(session, locked)
        outcome = f"{summary}; now {detail.status}"
        return schemas.TransactionActionOut(outcome=outcome, transaction=detail)

    async def release(
        self, txn_id: uuid.UUID, *, actor: str, note: str | None
    ) -> schemas.TransactionActionOut:
        async with self.factory() as session:
            txn = await repo.lock_transaction(session, txn_id)
            if txn is None:
                raise TransactionNotFound("No transaction with this id.")
            if not txn.held_for_review:
                raise errors.TransactionNotHeld(
                    f"The transaction is {txn.status} and not held for review: nothing to release."
                )
            released = await bakkt_sync.release_hold(
                session, txn, source=HistorySource.ADMIN, actor=actor, note=note
            )
            await alerts.resolve_open_alerts(
                session,
                kind=bakkt_sync.HELD_ALERT,
                subject=f"transaction {txn.id}",
                by=actor,
                note=note or "hold released",
                now=utcnow(),
            )
            await session.commit()
            detail = await self._detail(session, txn)
        moves = " -> ".join([released.before, *released.moved]) if released.moved else None
        outcome = f"released; {'moved ' + moves if moves else 'nothing withheld to apply'}"
        return schemas.TransactionActionOut(outcome=outcome, transaction=detail)

    async def _detail(
        self, session: AsyncSession, txn: Transaction
    ) -> schemas.AdminTransactionDetail:
        history = await repo.history(session, txn.id)
        return schemas.AdminTransactionDetail(
            **self._transaction_out(txn).model_dump(),
            history=[_history_out(h) for h in history],
        )

    def _transaction_out(self, txn: Transaction) -> schemas.AdminTransactionOut:
        expected_by = (
            settlement_deadline(txn.type, txn.method, txn.created_at, self.settings)
            if txn.status == Status.PENDING
            else None
        )
        return schemas.AdminTransactionOut(
            id=txn.id,
            party_ref=txn.party_ref,
            type=TransactionType(txn.type),
            method=TransactionMethod(txn.method) if txn.method else None,
            origin=txn.origin,
            status=Status(txn.status),
            amount=format_dollars(txn.amount_cents),
            currency=txn.currency,
            reason_code=txn.reason_code,
            reason_description=txn.reason_description,
            bakkt_ref=txn.bakkt_ref,
            bank_account_id=txn.bank_account_id,
            held_for_review=txn.held_for_review,
            review_reason=txn.review_reason,
            submit_attempts=txn.submit_attempts,
            check_attempts=txn.check_attempts,
            next_check_at=txn.next_check_at,
            expected_by=expected_by,
            created_at=txn.created_at,
            updated_at=txn.updated_at,
        )

    # --- webhook events -----------------------------------------------------------------------

    async def list_webhook_events(self, q: schemas.WebhookEventQuery) -> schemas.WebhookEventPage:
        before = _decode_id_cursor(q.cursor) if q.cursor else None
        async with self.factory() as session:
            rows = await webhooks_repo.list_events(
                session,
                limit=q.limit + 1,
                before_id=before,
                statuses=[str(s) for s in q.status],
                request_id=q.request_id,
                needs_operator=q.needs_operator,
            )
        page = rows[: q.limit]
        return schemas.WebhookEventPage(
            items=[_event_out(e) for e in page],
            next_cursor=str(page[-1].id) if len(rows) > q.limit else None,
        )

    async def replay_webhook_event(self, event_pk: int, *, actor: str) -> schemas.ReplayOut:
        async with self.factory() as session:
            replayed = await webhooks.replay(session, event_pk, actor=actor, now=utcnow())
            if replayed is None:
                raise errors.WebhookEventNotFound("No stored webhook event with this id.")
            if replayed.refused is not None:
                raise _REFUSALS[replayed.refused](replayed.why)
            await session.commit()
        return schemas.ReplayOut(outcome=replayed.row.outcome, event=_event_out(replayed.row))

    # --- bank accounts ------------------------------------------------------------------------

    async def get_bank_account(self, account_id: uuid.UUID) -> schemas.AdminBankAccountDetail:
        async with self.factory() as session:
            account = await repo.get_bank_account_by_id(session, account_id)
            if account is None:
                raise BankAccountNotFound("No bank account with this id.")
            return await _account_detail(session, account)

    async def disable_bank_account(
        self, account_id: uuid.UUID, *, actor: str, reason: str
    ) -> schemas.BankAccountActionOut:
        """Stop ACH money through a LINKED account, here only: Bakkt keeps it linked (its unlink
        is not undone by anything), and enabling it again is up to an operator."""
        async with self.factory() as session:
            account = await self._lock_account(session, account_id)
            if account.status != BankAccountStatus.LINKED:
                if account.status == BankAccountStatus.DISABLED:
                    raise errors.BankAccountAlreadyDisabled(
                        f"The bank account is DISABLED already ({account.reason_code})."
                    )
                raise BankAccountNotLinked(
                    f"The bank account is {account.status}: only a LINKED one can be disabled."
                )
            repo.move_bank_account(
                session,
                account,
                BankAccountStatus.DISABLED,
                source=HistorySource.ADMIN,
                reason_code=repo.OPERATOR_DISABLED,
                note=f"disabled by an operator: {reason}",
                now=utcnow(),
                actor=actor,
            )
            await session.commit()
            detail = await _account_detail(session, account)
        return schemas.BankAccountActionOut(outcome="disabled", bank_account=detail)

    async def enable_bank_account(
        self, account_id: uuid.UUID, *, actor: str, note: str | None
    ) -> schemas.BankAccountActionOut:
        """Undo an operator's disable, and only that: an account an ACH return disabled stays
        DISABLED (the consumer links another one). It becomes LINKED again, or REPLACED when the
        party has linked another account since (Bakkt keeps one, and moves money through it)."""
        async with self.factory() as session:
            account = await self._lock_account(session, account_id)
            if account.status != BankAccountStatus.DISABLED:
                raise errors.BankAccountNotOperatorDisabled(
                    f"The bank account is {account.status}, not disabled."
                )
            if account.reason_code != repo.OPERATOR_DISABLED:
                raise errors.BankAccountNotOperatorDisabled(
                    f"An ACH return ({account.reason_code}) disabled this bank account, not an "
                    "operator: it cannot be used again; the consumer links another one."
                )
            current = await repo.linked_bank_account(session, account.party_ref)
            target = BankAccountStatus.LINKED if current is None else BankAccountStatus.REPLACED
            why = "enabled by an operator" + (
                "" if current is None else f"; bank account {current.id} was linked since"
            )
            repo.move_bank_account(
                session,
                account,
                target,
                source=HistorySource.ADMIN,
                reason_code=None,
                note=f"{why}: {note}" if note else why,
                now=utcnow(),
                actor=actor,
            )
            await session.commit()
            detail = await _account_detail(session, account)
        return schemas.BankAccountActionOut(outcome=f"enabled: {target}", bank_account=detail)

    @staticmethod
    async def _lock_account(session: AsyncSession, account_id: uuid.UUID) -> BankAccount:
        # The party's lock first, then the account's, as the link webhook takes them: whether
        # the party has another LINKED account cannot change under an enable.
        found = await repo.get_bank_account_by_id(session, account_id)
        if found is None:
            raise BankAccountNotFound("No bank account with this id.")
        await repo.lock_party(session, found.party_ref)
        account = await repo.lock_bank_account_by_id(session, account_id)
        if account is None:  # pragma: no cover - bank accounts are never deleted once seen
            raise BankAccountNotFound("No bank account with this id.")
        return account

    # --- alerts -------------------------------------------------------------------------------

    async def list_alerts(self, q: schemas.AlertQuery) -> schemas.AlertPage:
        before = _decode_id_cursor(q.cursor) if q.cursor else None
        async with self.factory() as session:
            rows = await alerts_repo.list_alerts(
                session,
                limit=q.limit + 1,
                before_id=before,
                open_only=not q.include_resolved,
                kind=q.kind,
            )
        page = rows[: q.limit]
        return schemas.AlertPage(
            items=[_alert_out(a) for a in page],
            next_cursor=str(page[-1].id) if len(rows) > q.limit else None,
        )

    async def resolve_alert(
        self, alert_id: int, *, actor: str, note: str | None
    ) -> schemas.AlertOut:
        async with self.factory() as session:
            result, alert = await alerts.resolve_alert(
                session, alert_id, by=actor, note=note, now=utcnow()
            )
            if result is Resolution.NOT_FOUND or alert is None:
                raise errors.AlertNotFound("No alert with this id.")
            if result is Resolution.ALREADY_RESOLVED:
                raise errors.AlertAlreadyResolved(
                    f"Resolved at {alert.resolved_at:%Y-%m-%dT%H:%M:%SZ} by {alert.resolved_by}."
                )
            await session.commit()
        return _alert_out(alert)


# Ids are bigint sequences; a cursor is the last one seen.
_MAX_ID = 2**63 - 1


def _decode_id_cursor(cursor: str) -> int:
    if not cursor.isascii() or not cursor.isdigit() or not 0 < int(cursor) <= _MAX_ID:
        raise InvalidCursor("Pass back the `nextCursor` of a previous page unchanged.")
    return int(cursor)


def _history_out(h: TransactionHistory) -> schemas.AdminHistoryEntryOut:
    return schemas.AdminHistoryEntryOut(
        id=h.id,
        from_status=Status(h.from_status) if h.from_status else None,
        to=Status(h.to_status),
        source=HistorySource(h.source),
        actor=h.actor,
        event_id=h.event_id,
        reason_code=h.reason_code,
        applied=h.applied,
        note=h.note,
        event_time=h.event_time,
        at=h.recorded_at,
    )


async def _account_detail(
    session: AsyncSession, account: BankAccount
) -> schemas.AdminBankAccountDetail:
    history: Sequence[BankAccountHistory] = await repo.bank_account_history(session, account.id)
    return schemas.AdminBankAccountDetail(
        id=account.id,
        party_ref=account.party_ref,
        status=BankAccountStatus(account.status),
        current=account.status == BankAccountStatus.LINKED,
        link_method=account.link_method,
        bank_name=account.bank_name,
        account_mask=account.account_mask,
        account_type=account.account_type,
        reason_code=account.reason_code,
        needs_review=account.needs_review,
        created_at=account.created_at,
        updated_at=account.updated_at,
        history=[
            schemas.AdminBankAccountHistoryEntryOut(
                id=h.id,
                from_status=BankAccountStatus(h.from_status) if h.from_status else None,
                to=BankAccountStatus(h.to_status),
                source=h.source,
                actor=h.actor,
                event_id=h.event_id,
                reason_code=h.reason_code,
                note=h.note,
                at=h.recorded_at,
            )
            for h in history
        ],
    )


def _event_out(row: WebhookEvent) -> schemas.WebhookEventOut:
    return schemas.WebhookEventOut(
        id=row.id,
        request_id=row.request_id,
        event_type=row.event_type,
        party_ref=row.party_ref,
        transaction_ref=row.transaction_ref,
        status=row.status,
        outcome=row.outcome,
        attempts=row.attempts,
        needs_operator=row.needs_operator,
        event_time=row.event_time,
        received_at=row.received_at,
        processed_at=row.processed_at,
        next_attempt_at=row.next_attempt_at,
    )


def _alert_out(alert: OperatorAlert) -> schemas.AlertOut:
    return schemas.AlertOut(
        id=alert.id,
        kind=alert.kind,
        subject=alert.subject,
        detail=alert.detail,
        data=alert.data,
        created_at=alert.created_at,
        resolved_at=alert.resolved_at,
        resolved_by=alert.resolved_by,
        resolution_note=alert.resolution_note,
    )
