"""The funding rules: who may move what, the money path toward Bakkt, and the live reads.

The money path (STYLE.md): claim the consumer's Idempotency-Key (committed) -> in one database
transaction lock the party, check its status and limits, write the transaction as SUBMITTING
with Bakkt's reference and idempotency key derived from its own id, and point the key at it
(committed) -> call Bakkt with no database transaction open -> record the outcome and the
response to replay in one transaction (committed). A process that dies anywhere in between leaves
a key whose lease runs out and a transaction that recovery can settle; a retry with the same key
resumes it with the same Bakkt idempotency key, never a new one.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import cast

from sqlalchemy.ext.asyncio import AsyncSession

from app.bakkt import (
    BakktClient,
    BakktError,
    BakktOutcomeUnknown,
    BakktRateLimited,
    BakktRejected,
    Instrument,
)
from app.bakkt import WireDestination as BakktWireDestination
from app.config import Settings
from app.core.clock import db_now, utcnow
from app.core.metrics import METRICS
from app.core.money import format_dollars, to_cents
from app.db import outside_transaction
from app.errors import (
    AppError,
)
from app.events import service as events
from app.funding import repository as repo
from app.funding import schemas
from app.funding.errors import (
    BAKKT_REJECTIONS,
    BakktUnavailableProblem,
    BankAccountDisabled,
    BankAccountLinkPending,
    BankAccountNotFound,
    BankAccountNotLinked,
    BankAccountReplaced,
    BankAccountUnderReview,
    InvalidCursor,
    InvalidProcessorToken,
    LimitExceeded,
    NoLinkedBankAccount,
    PartyNotActive,
    PartySuspended,
    TransactionNotFound,
    UnknownBankAccount,
    rejection_error,
    unavailable_error,
)
from app.funding.models import (
    BankAccount,
    BankAccountStatus,
    HistorySource,
    LinkMethod,
    Party,
    PartyStatus,
    Transaction,
    TransactionHistory,
    TransactionMethod,
    TransactionOrigin,
    TransactionStatus,
    TransactionType,
)
from app.funding.party_status import reason_fields
from app.funding.state import record_creation, transition
from app.funding.transfer import transfer_request
from app.funding.views import bank_account_out, party_out, transaction_detail, transaction_out
from app.idempotency import service as idempotency
from app.idempotency.answers import Accepted, Answer, Created, Done, InProgress, Rejected, Result
from app.idempotency.service import (
    ClaimTaken,
    ClaimTerms,
    IdempotencyRequestInProgress,
    IdempotentRequest,
    KeyClaim,
)

log = logging.getLogger("app.funding")

# Bakkt idempotency keys are uuid5(this, our transaction id): derived, so every resend of one
# intent carries the same key, and never stored anywhere but the transaction row.
_BAKKT_KEY_NAMESPACE = uuid.UUID("8d8f3c1e-2b7a-5e3f-9c41-6f0a1d2b3c4e")
# Bank-account ids of link requests are derived from the claim of their Idempotency-Key, so a
# retry that takes over a dead request finds the row the first one wrote.
_LINK_NAMESPACE = uuid.UUID("2f6b7c8d-9e0a-5b1c-8d2e-3f4a5b6c7d8e")

# When recovery (issue 7) should first look at a transaction in each open state.
CHECK_PENDING_AFTER = timedelta(seconds=60)
CHECK_UNKNOWN_AFTER = timedelta(seconds=10)
# Bakkt's link webhook comes within seconds of the link request; what Retry-After suggests
# when a deposit finds the party's only account still PENDING.
LINK_PENDING_RETRY_AFTER = 5

# Bakkt's published minimum for an ACH withdrawal (docs/bakkt-contract.md §2.8); wires and
# deposits have none. Checked here, before anything is written, so that a request under it is
# bad input that changes nothing rather than a FAILED transaction in the consumer's history.
ACH_WITHDRAWAL_MINIMUM = Decimal("10.00")
# Bakkt names its minimum in its description ("... minimum withdrawal amount of $10.").
_BAKKT_MINIMUM = re.compile(r"\$([0-9]+(?:\.[0-9]{1,2})?)")


class Direction(StrEnum):
    DEPOSIT = "DEPOSIT"
    WITHDRAWAL = "WITHDRAWAL"


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransferIntent:
    direction: Direction
    method: TransactionMethod
    amount: Decimal
    bank_account_id: uuid.UUID | None = None
    wire: schemas.WireDestination | None = None


@dataclass(frozen=True, slots=True)
class _Submitted:
    pass


@dataclass(frozen=True, slots=True)
class _Refused:
    error: BakktRejected


@dataclass(frozen=True, slots=True)
class _Unsettled:
    """Bakkt did not say yes or no: it may have the transfer (timeout, 5xx after a resend) or
    certainly does not (unreachable, 429). Either way recovery settles it with the same key."""

    note: str
    check_after: timedelta


_SubmitResult = _Submitted | _Refused | _Unsettled


def encode_cursor(txn: Transaction) -> str:
    raw = json.dumps([txn.created_at.isoformat(), str(txn.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, ident = json.loads(raw)
        created = datetime.fromisoformat(stamp)
        if created.tzinfo is None:
            raise ValueError("naive time")
        # A forged cursor may carry a time out of range once in UTC.
        return created.astimezone(UTC), uuid.UUID(ident)
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor("Pass back the `nextCursor` of a previous page unchanged.") from None


def _below_minimum(minimum: Decimal) -> AppError:
    shown = f"{minimum:.2f}"
    return BAKKT_REJECTIONS["below_minimum"](
        f"An ACH withdrawal must be at least {shown} USD.",
        extra={"minimum": shown, "currency": "USD"},
    )


async def _finish(session: AsyncSession, claim: KeyClaim, answer: Answer) -> Answer:
    answer = await idempotency.finish(session, claim, answer)
    await session.commit()
    return answer


# --- party rules --------------------------------------------------------------------------------


def _gate(party: Party, direction: Direction) -> None:
    """Refuse before Bakkt is called: only an ACTIVE party deposits or links; a LIQUIDATED
    one may still withdraw what it holds."""
    status = party.status
    if status == PartyStatus.ACTIVE:
        return
    if status == PartyStatus.LIQUIDATED and direction is Direction.WITHDRAWAL:
        return
    extra: dict[str, object] = {"partyStatus": status, **reason_fields(party.status_reason)}
    if party.verification_url is not None:
        extra["verificationUrl"] = party.verification_url
        extra["verificationUrlExpiresAt"] = (
            party.verification_url_expires_at.isoformat()
            if party.verification_url_expires_at
            else None
        )
    if status == PartyStatus.SUSPENDED:
        raise PartySuspended("The account is suspended.", extra=extra)
    action = "deposit or link a bank account" if direction is Direction.DEPOSIT else "withdraw"
    raise PartyNotActive(f"An account with status {status} may not {action}.", extra=extra)


async def _check_limits(
    session: AsyncSession,
    settings: Settings,
    party_ref: str,
    direction: Direction,
    amount_cents: int,
    usage: repo.LimitUsage | None = None,
) -> datetime:
    """Per transaction, per rolling 24 hours and per rolling 30 days, by direction. The
    caller holds the party row lock, so the sums cannot change under it (`usage`, when the
    caller read them already, read under that lock). Returns the database's clock the
    windows were judged at: the new transaction's `created_at`."""
    if usage is None:
        usage = await repo.limit_usage(session, party_ref, direction)
    cfg = settings

    def pick(own: int | None, default: Decimal) -> int:
        return own if own is not None else to_cents(default)

    per_tx = pick(usage.per_transaction_cents, cfg.default_limit_per_transaction)
    per_day = pick(usage.per_day_cents, cfg.default_limit_per_day)
    per_30 = pick(usage.per_30_days_cents, cfg.default_limit_per_30_days)
    if amount_cents > per_tx:
        raise _limit_error("perTransaction", per_tx, per_tx)
    for name, limit, used in (
        ("perDay", per_day, usage.used_day_cents),
        ("per30Days", per_30, usage.used_30_days_cents),
    ):
        if used + amount_cents > limit:
            raise _limit_error(name, limit, max(limit - used, 0))
    return usage.now


def _limit_error(name: str, limit: int, available: int) -> LimitExceeded:
    return LimitExceeded(
        f"The amount exceeds the {name} limit of {format_dollars(limit)} USD "
        f"({format_dollars(available)} USD available now).",
        extra={
            "limit": name,
            "limitAmount": format_dollars(limit),
            "available": format_dollars(available),
        },
    )


async def _usable_bank_account(
    session: AsyncSession,
    party_ref: str,
    account_id: uuid.UUID | None,
    direction: Direction,
    current: BankAccount | None,
) -> BankAccount:
    """The party's current account (`current`, read by the caller), the one Bakkt's
    `/transfer` will use (it names none). A request naming another one is refused rather
    than recorded against an account that no money moves through."""
    account = current
    named = None
    if account_id is not None and (account is None or account.id != account_id):
        named = await repo.get_bank_account(session, party_ref, account_id)
        if named is None:
            raise UnknownBankAccount("No bank account with this id for this account.")
        if named.status == BankAccountStatus.REPLACED:
            raise BankAccountReplaced(
                "A later link replaced this bank account; Bakkt moves money through the "
                "current one only. Name that one, or none.",
                extra={
                    "bankAccountId": str(named.id),
                    "currentBankAccountId": str(account.id) if account else None,
                },
            )
    if account is None:
        account = named or await _newest_unusable(session, party_ref)
        if account is None:
            raise NoLinkedBankAccount("Link a bank account before moving money by ACH.")
    elif named is not None:
        # The current account is LINKED and another one was named (PENDING, FAILED...).
        account = named
    if account.status == BankAccountStatus.PENDING:
        raise BankAccountLinkPending(
            "The bank account's link has not been confirmed by Bakkt yet; retry shortly.",
            extra={"bankAccountId": str(account.id)},
            retry_after=LINK_PENDING_RETRY_AFTER,
        )
    if account.status == BankAccountStatus.DISABLED:
        raise BankAccountDisabled(
            "An ACH return showed this bank account cannot be used. Link another one.",
            extra={"bankAccountId": str(account.id), "reasonCode": account.reason_code},
        )
    if account.status != BankAccountStatus.LINKED:
        raise BankAccountNotLinked(
            f"The bank account is {account.status}, not LINKED.",
            extra={"bankAccountId": str(account.id)},
        )
    # A disputed debit (R05, R07, R10, R29) puts the account under review: no more pulls
    # from it until an operator clears it; paying money out to it stays possible.
    if account.needs_review and direction is Direction.DEPOSIT:
        raise BankAccountUnderReview(
            "Deposits from this bank account are paused while it is reviewed.",
            extra={"bankAccountId": str(account.id)},
        )
    return account


async def _newest_unusable(session: AsyncSession, party_ref: str) -> BankAccount | None:
    """Why there is no current account: a link Bakkt has and will answer by webhook (Plaid,
    account details) says more than a DISABLED account, which says more than nothing. A
    hosted link session stays PENDING also when the consumer never finishes the page, so
    it does not count."""
    return await repo.newest_sent_link(
        session, party_ref, [LinkMethod.PLAID, LinkMethod.ACCOUNT_DETAILS]
    ) or await repo.newest_bank_account(session, party_ref, [BankAccountStatus.DISABLED])


# --- the money path -------------------------------------------------------------------------


async def transfer(
    session: AsyncSession,
    bakkt: BakktClient,
    settings: Settings,
    terms: ClaimTerms,
    party_ref: str,
    intent: TransferIntent,
    idem: IdempotentRequest,
) -> Result:
    """A deposit or a withdrawal: accepted (the transaction, PENDING or UNKNOWN), rejected by
    Bakkt, the stored answer replayed, or in progress elsewhere. Bad input and a closed door
    (limits, the party's status, the bank account, Bakkt down) raise before anything is
    written, and leave the key usable."""
    claimed = await idempotency.claim(session, idem, terms)
    if not isinstance(claimed, KeyClaim):
        return claimed
    if claimed.transaction_id is None:
        breaker = bakkt.breaker
        if breaker is not None and breaker.is_open():
            # Bakkt is down: answer at once and write nothing (docs/recovery.md), instead of
            # piling up intents whose calls would only fail; the key stays usable.
            await idempotency.release_quietly(session, claimed)
            raise BakktUnavailableProblem(
                "Bakkt cannot be reached right now; retry with the same Idempotency-Key.",
                retry_after=max(1, math.ceil(breaker.retry_after())),
            )
        try:
            txn = await _write_intent(session, settings, terms, party_ref, intent, claimed)
        except ClaimTaken as lost:
            await idempotency.release_quietly(session, claimed)
            return lost.in_progress
        except Exception:
            # Nothing was written: the same key may be used again at once.
            await idempotency.release_quietly(session, claimed)
            raise
    else:
        found = await repo.get_transaction(session, party_ref, claimed.transaction_id)
        if found is None:  # pragma: no cover - the key and its transaction commit together
            raise RuntimeError(f"idempotency key points at missing {claimed.transaction_id}")
        txn = found
        await session.commit()
        if txn.status not in (TransactionStatus.SUBMITTING, TransactionStatus.UNKNOWN):
            # A webhook or recovery settled it while nobody held the key: report it as is.
            return await _record_outcome(session, claimed, txn.id, None, idem.path)
        log.info("resuming transfer %s from a stale idempotency claim", txn.id)
    try:
        result = await _submit(bakkt, txn, intent.wire)
        written = txn if claimed.transaction_id is None else None
        return await _record_outcome(session, claimed, txn.id, result, idem.path, written)
    except Exception:
        await idempotency.end_lease_quietly(session, claimed)
        raise


async def _write_intent(
    session: AsyncSession,
    settings: Settings,
    terms: ClaimTerms,
    party_ref: str,
    intent: TransferIntent,
    claimed: KeyClaim,
) -> Transaction:
    party = await repo.lock_party_for_money(session, party_ref)
    _gate(party, intent.direction)
    if (
        intent.direction is Direction.WITHDRAWAL
        and intent.method is TransactionMethod.ACH
        and intent.amount < ACH_WITHDRAWAL_MINIMUM
    ):
        raise _below_minimum(ACH_WITHDRAWAL_MINIMUM)
    account = None
    usage = None
    if intent.method is TransactionMethod.ACH:
        # The account and the limits' sums in one round trip, the account judged first.
        usage, current = await repo.limit_usage_and_linked_account(
            session, party_ref, intent.direction
        )
        account = await _usable_bank_account(
            session, party_ref, intent.bank_account_id, intent.direction, current
        )
    amount_cents = to_cents(intent.amount)
    now = await _check_limits(session, settings, party_ref, intent.direction, amount_cents, usage)
    txn_id = uuid.uuid4()
    wire = intent.wire
    # Every column, since the row is written by one statement, not by the session's flush.
    txn = Transaction(
        id=txn_id,
        party_ref=party_ref,
        type=TransactionType(intent.direction),
        method=intent.method,
        origin=TransactionOrigin.PARTNER,
        status=TransactionStatus.SUBMITTING,
        amount_cents=amount_cents,
        currency="USD",
        reason_code=None,
        reason_description=None,
        bakkt_ref=str(txn_id),
        bakkt_idempotency_key=str(uuid.uuid5(_BAKKT_KEY_NAMESPACE, str(txn_id))),
        related_transaction_id=None,
        bank_account_id=account.id if account else None,
        wire_bank_name=wire.bank_name if wire else None,
        wire_account_mask=wire.account_number.get_secret_value()[-4:] if wire else None,
        held_for_review=False,
        review_reason=None,
        review_mismatch=None,
        status_event_time=None,
        submit_attempts=1,
        # Recovery leaves it alone while this request may still be talking to Bakkt.
        next_check_at=now + terms.lease,
        check_attempts=0,
        # The page cursor and the limit windows order by it: the database's clock.
        created_at=now,
        updated_at=now,
    )
    # The intent and the claim's pointer to it, one statement. Nothing written: another holder
    # of the claim (a live one believed gone) wrote its intent first.
    record_creation(session, txn, source=HistorySource.API, note="requested by the consumer")
    # Its history row and its one event, `transaction.created`.
    taken = _take_recorded(session, txn, events_from=1)
    creation = (taken[0], taken[1][0]) if taken is not None else None
    if not await repo.insert_intent(session, txn, key_id=claimed.key_id, creation=creation):
        METRICS.idempotency_rejections.labels(IdempotencyRequestInProgress.code).inc()
        raise ClaimTaken()
    await session.commit()
    return txn


def _take_recorded(
    session: AsyncSession, txn: Transaction, *, events_from: int = 0
) -> tuple[TransactionHistory, list[dict[str, object]]] | None:
    """The history row and the events `state` has just recorded for `txn`, taken off the
    session, so that the statement writing `txn` writes them too (issue 11: the commit's flush
    and outbox INSERT were two more round trips, and the flush the costliest step on the path).
    None, and nothing taken, when the session holds anything else to write: then its commit
    writes everything, as usual. The statements take one history row and `events_from` to
    one event."""
    sync = session.sync_session
    pending = list(sync.new)
    if (
        not events_from <= events.queued_count(session) <= 1
        or len(pending) != 1
        or not isinstance(pending[0], TransactionHistory)
        or pending[0].transaction_id != txn.id
        or sync.deleted
        or any(o is not txn for o in sync.dirty)
    ):
        return None
    sync.expunge(pending[0])
    return pending[0], events.take_queued(session)


async def _submit(
    bakkt: BakktClient, txn: Transaction, wire: schemas.WireDestination | None
) -> _SubmitResult:
    request = transfer_request(
        party_ref=txn.party_ref,
        bakkt_ref=txn.bakkt_ref,
        idempotency_key=cast(str, txn.bakkt_idempotency_key),
        type_=txn.type,
        method=cast(str, txn.method),
        amount_cents=txn.amount_cents,
        currency=txn.currency,
        wire=None
        if wire is None
        else BakktWireDestination(
            routing_number=wire.routing_number,
            account_number=wire.account_number.get_secret_value(),
            bank_name=wire.bank_name,
            bank_address=wire.bank_address,
            swift_code=wire.swift_code,
        ),
    )
    try:
        await bakkt.transfer(request)
    except BakktRejected as exc:
        return _Refused(exc)
    except BakktOutcomeUnknown as exc:
        return _Unsettled(f"outcome unknown: {exc.last_error}", CHECK_UNKNOWN_AFTER)
    except BakktRateLimited as exc:
        wait = timedelta(seconds=exc.retry_after or CHECK_UNKNOWN_AFTER.total_seconds())
        return _Unsettled("not sent: Bakkt rate limited it", max(wait, CHECK_UNKNOWN_AFTER))
    except BakktError as exc:
        return _Unsettled(f"not sent: {type(exc).__name__}", CHECK_UNKNOWN_AFTER)
    return _Submitted()


async def _record_outcome(
    session: AsyncSession,
    claimed: KeyClaim,
    txn_id: uuid.UUID,
    result: _SubmitResult | None,
    instance: str,
    written: Transaction | None = None,
) -> Answer:
    """Record Bakkt's answer and the key's. `written`: the row as this request's intent wrote
    it, when it did, to try recording it without the row lock first."""
    if written is not None and result is not None and not claimed.resumed:
        answer = await _record_outcome_unlocked(session, claimed, written, result, instance)
        if answer is not None:
            return answer
    txn = await repo.lock_transaction(session, txn_id)
    if txn is None:  # pragma: no cover - transactions are never deleted
        raise RuntimeError(f"transaction {txn_id} vanished")
    answer, keep = _apply_outcome(session, claimed, txn, result, instance)
    if not keep:
        # Our set-up is at fault, not the request: nothing is stored, so the same key works
        # again once an operator has fixed it.
        await idempotency.forget(session, claimed)
        await session.commit()
        return answer
    return await _finish_move(session, claimed, txn, answer)


async def _record_outcome_unlocked(
    session: AsyncSession,
    claimed: KeyClaim,
    txn: Transaction,
    result: _SubmitResult,
    instance: str,
) -> Answer | None:
    """The outcome of this request's own first call to Bakkt in one statement, with no
    transaction around it (issue 11: BEGIN, the row lock and COMMIT were three of a deposit's
    round trips). `transition` judges the move against the row as this request's intent wrote
    it, and the statement applies it only while the row is still exactly that: nothing (a
    webhook, recovery) has touched it since, and a writer holding it is waited for and its
    commit re-checked. Else nothing is written and None returned: the caller takes the row
    lock and judges again."""
    seen = repo.transaction_values(txn)
    if seen is None:
        return None
    # Before `transition`, whose session.add would begin a transaction.
    await outside_transaction(session)
    answer, keep = _apply_outcome(session, claimed, txn, result, instance)
    taken = _take_recorded(session, txn) if keep else None
    if taken is not None:
        written = await _write_outcome(session, claimed, txn, taken, answer, unchanged_from=seen)
        if written is not None:
            return written
    # Nothing written: drop what was recorded, so that the row is judged afresh under its lock.
    events.take_queued(session)
    sync = session.sync_session
    for pending in list(sync.new):
        if isinstance(pending, TransactionHistory):
            sync.expunge(pending)
    sync.expire(txn)
    await session.rollback()
    return None


def _apply_outcome(
    session: AsyncSession,
    claimed: KeyClaim,
    txn: Transaction,
    result: _SubmitResult | None,
    instance: str,
) -> tuple[Answer, bool]:
    """Move `txn` for Bakkt's answer (through `transition`) and say what the key answers, and
    whether that answer is kept (False: the key is to be forgotten instead)."""
    now = utcnow()
    if result is not None and claimed.resumed:
        txn.submit_attempts += 1
    if isinstance(result, _Submitted):
        transition(
            session,
            txn,
            TransactionStatus.PENDING,
            source=HistorySource.API,
            note="accepted by Bakkt",
        )
        if txn.status == TransactionStatus.PENDING:
            txn.next_check_at = now + CHECK_PENDING_AFTER
    elif isinstance(result, _Unsettled):
        moved = transition(
            session, txn, TransactionStatus.UNKNOWN, source=HistorySource.API, note=result.note
        )
        if moved:
            txn.next_check_at = now + result.check_after
    elif isinstance(result, _Refused):
        exc = result.error
        moved = transition(
            session,
            txn,
            TransactionStatus.FAILED,
            source=HistorySource.API,
            reason_code=exc.code,
            reason_description=exc.consumer_message,
            note=f"rejected by Bakkt: {exc.status} {exc.bakkt_type}",
        )
        if moved:
            txn.next_check_at = None
            log.info("transfer %s rejected by Bakkt: %s", txn.id, exc.bakkt_type)
            detail, extra = exc.consumer_message, {"transactionId": str(txn.id)}
            if exc.code == "below_minimum":
                # Bakkt's minimum is above ours: name the one it gave, when it gave one.
                found = _BAKKT_MINIMUM.search(exc.description or "")
                if found is not None:
                    named = _below_minimum(Decimal(found.group(1)))
                    detail, extra = named.detail, {**extra, **named.extra}
            rejected = Rejected.of(
                BAKKT_REJECTIONS[exc.code](detail, extra=extra), instance=instance
            )
            return rejected, exc.http_status < 500
    log.info("transfer %s is %s", txn.id, txn.status)
    return Accepted(schemas.dump(transaction_out(txn))), True


async def _finish_move(
    session: AsyncSession, claimed: KeyClaim, txn: Transaction, answer: Answer
) -> Answer:
    """`_finish` after `transition` moved (or only recorded a word for) the locked `txn`: the
    row, its history, its event and the key's answer in one statement, then the commit."""
    taken = _take_recorded(session, txn)
    if taken is None:
        return await _finish(session, claimed, answer)
    written = await _write_outcome(session, claimed, txn, taken, answer)
    if written is None:  # pragma: no cover - the row is locked, and never deleted
        raise RuntimeError(f"transaction {txn.id} vanished under its lock")
    return written


async def _write_outcome(
    session: AsyncSession,
    claimed: KeyClaim,
    txn: Transaction,
    taken: tuple[TransactionHistory, list[dict[str, object]]],
    answer: Answer,
    *,
    unchanged_from: dict[str, object] | None = None,
) -> Answer | None:
    """The row, its history, its event and the key's answer in one statement, then the commit;
    None (nothing written, nothing committed) when `unchanged_from` no longer matches."""
    history, rows = taken
    finished = await repo.record_outcome(
        session,
        txn,
        history,
        rows[0] if rows else None,
        idempotency.finish_params(claimed, answer),
        unchanged_from=unchanged_from,
    )
    if finished is None:
        return None
    # Written by that statement: the commit must not flush the row's changes a second time.
    session.expunge(txn)
    answer = await idempotency.answer_after_finish(session, claimed, answer, finished=finished)
    await session.commit()
    return answer


# --- bank accounts --------------------------------------------------------------------------


def _link_account_id(claimed: KeyClaim) -> uuid.UUID:
    return uuid.uuid5(_LINK_NAMESPACE, f"{claimed.key_id}:{claimed.created_at.isoformat()}")


async def _write_link(
    session: AsyncSession,
    party_ref: str,
    claimed: KeyClaim,
    method: LinkMethod,
    known: tuple[str, str] | None = None,
) -> BankAccount:
    party = await repo.lock_or_create_party(session, party_ref)
    _gate(party, Direction.DEPOSIT)
    account_id = _link_account_id(claimed)
    now = await db_now(session)
    account = BankAccount(
        id=account_id,
        party_ref=party_ref,
        # What Bakkt's BANK_ACCOUNT_LINK webhook will carry as partnerTransactionRef.
        link_ref=str(account_id),
        link_method=method,
        status=BankAccountStatus.PENDING,
        # Linking by account details: the last 4 digits and the type are known at once.
        account_mask=known[0] if known else None,
        account_type=known[1] if known else None,
        created_at=now,
        updated_at=now,
    )
    repo.add_bank_account(session, account)
    await session.flush()
    repo.add_bank_account_history(
        session,
        account_id=account_id,
        from_status=None,
        to_status=BankAccountStatus.PENDING,
        source=HistorySource.API,
        note=f"link requested ({method})",
    )
    await idempotency.record_intent(session, claimed, None)
    await session.commit()
    return account


async def _resume_or_write_link(
    session: AsyncSession,
    party_ref: str,
    claimed: KeyClaim,
    method: LinkMethod,
    known: tuple[str, str] | None = None,
) -> tuple[BankAccount, bool] | InProgress:
    """The link row (written now, or by an earlier holder of the key) and whether it is new."""
    if claimed.intent_written:
        account = await repo.get_bank_account(session, party_ref, _link_account_id(claimed))
        await session.commit()
        if account is not None:
            return account, False
    try:
        return await _write_link(session, party_ref, claimed, method, known), True
    except ClaimTaken as lost:
        await idempotency.release_quietly(session, claimed)
        return lost.in_progress
    except Exception:
        await idempotency.release_quietly(session, claimed)
        raise


async def _abandon_link(session: AsyncSession, claimed: KeyClaim, account_id: uuid.UUID) -> None:
    """Bakkt certainly did nothing: drop the row and the claim, so a retry starts afresh."""
    await session.rollback()
    await repo.delete_bank_account(session, account_id)
    await idempotency.forget(session, claimed)
    await session.commit()


async def create_link_session(
    session: AsyncSession,
    bakkt: BakktClient,
    terms: ClaimTerms,
    party_ref: str,
    body: schemas.LinkSessionRequest,
    idem: IdempotentRequest,
) -> Result:
    """A hosted link page: created (its URL), replayed, or in progress elsewhere."""
    claimed = await idempotency.claim(session, idem, terms)
    if not isinstance(claimed, KeyClaim):
        return claimed
    written = await _resume_or_write_link(session, party_ref, claimed, LinkMethod.HOSTED)
    if isinstance(written, InProgress):
        return written
    account, _ = written
    redirect = str(body.redirect_uri) if body.redirect_uri else None
    try:
        # Asking again for a URL is harmless (an unused one expires), so a resumed claim
        # simply asks again.
        link = await bakkt.create_link_url(party_ref, account.link_ref, redirect)
    except BakktError as exc:
        await _abandon_link(session, claimed, account.id)
        raise unavailable_error(exc) from None
    session_out = schemas.LinkSession(
        bank_account_id=account.id, link_url=link.url, expires_at=link.expires_at
    )
    # Recovery fails the account if the page is abandoned (docs/recovery.md).
    await repo.set_link_expiry(session, account.id, link.expires_at)
    return await _finish(session, claimed, Created(schemas.dump(session_out)))


async def link_bank_account(
    session: AsyncSession,
    bakkt: BakktClient,
    terms: ClaimTerms,
    party_ref: str,
    body: schemas.PlaidLinkRequest | schemas.AccountDetailsLinkRequest,
    idem: IdempotentRequest,
) -> Result:
    """Send a link to Bakkt once: a Plaid processor token, or an account's routing and
    account number. Either way the account is PENDING until the link webhook, and the
    secret part (token, account number) is passed on and never kept, beyond the account
    number's last 4 digits. Accepted (the account, PENDING), rejected by Bakkt, replayed, or in
    progress elsewhere."""
    claimed = await idempotency.claim(session, idem, terms)
    if not isinstance(claimed, KeyClaim):
        return claimed
    if isinstance(body, schemas.PlaidLinkRequest):
        method, known = LinkMethod.PLAID, None
    else:
        number = body.account_number.get_secret_value()
        method, known = LinkMethod.ACCOUNT_DETAILS, (number[-4:], str(body.account_type))
    written = await _resume_or_write_link(session, party_ref, claimed, method, known)
    if isinstance(written, InProgress):
        return written
    account, new = written
    if not new:
        # The earlier holder may have sent the link already, and a link carries no
        # idempotency key at Bakkt: never send it twice. Its webhook settles the row.
        return await _finish(session, claimed, Accepted(schemas.dump(bank_account_out(account))))
    try:
        if isinstance(body, schemas.PlaidLinkRequest):
            await bakkt.link_plaid(
                party_ref, account.link_ref, body.processor_token.get_secret_value()
            )
        else:
            await bakkt.link_ach(
                party_ref,
                account.link_ref,
                body.account_number.get_secret_value(),
                body.routing_number,
                str(body.account_type),
            )
    except BakktRejected as exc:
        if exc.http_status >= 500:
            # Our set-up is at fault, not the link: keep nothing, so a retry can work.
            await _abandon_link(session, claimed, account.id)
            raise rejection_error(exc) from None
        extra = {"bankAccountId": str(account.id)}
        refusal: AppError
        if exc.code == "relink_required":
            # Bakkt's "no such item" / "auth not active" on a token it has never seen means
            # the token itself is bad; relink_required is for a link that worked before.
            refusal = InvalidProcessorToken(
                "Bakkt did not accept the processor token (invalid or expired). Create a new "
                "one with Plaid's /processor/token/create (processor: bakkt) and send it "
                "with a new Idempotency-Key.",
                extra=extra,
            )
        else:
            refusal = BAKKT_REJECTIONS[exc.code](exc.consumer_message, extra=extra)
        locked = await repo.lock_bank_account(session, party_ref, account.id)
        if locked is not None and locked.status == BankAccountStatus.PENDING:
            repo.add_bank_account_history(
                session,
                account_id=locked.id,
                from_status=locked.status,
                to_status=BankAccountStatus.FAILED,
                source=HistorySource.API,
                reason_code=exc.code,
                note=f"rejected by Bakkt: {exc.status} {exc.bakkt_type}",
            )
            locked.status = BankAccountStatus.FAILED
            locked.reason_code = refusal.code
            locked.updated_at = utcnow()
        return await _finish(session, claimed, Rejected.of(refusal, instance=idem.path))
    except BakktOutcomeUnknown:
        # It may have reached Bakkt: the row stays PENDING and the link webhook decides.
        log.warning("%s link %s: outcome unknown, waiting for its webhook", method, account.id)
    except BakktError as exc:
        await _abandon_link(session, claimed, account.id)
        raise unavailable_error(exc) from None
    # Bakkt's 200 only says it took the link: whether the bank links (and its name and
    # mask) comes in the BANK_ACCOUNT_LINK webhook, so the account stays PENDING till then.
    fresh = await repo.get_bank_account(session, party_ref, account.id)
    return await _finish(
        session, claimed, Accepted(schemas.dump(bank_account_out(fresh or account)))
    )


async def list_bank_accounts(session: AsyncSession, party_ref: str) -> schemas.BankAccountList:
    await outside_transaction(session)
    rows = await repo.list_bank_accounts(session, party_ref)
    return schemas.BankAccountList(items=[bank_account_out(a) for a in rows])


async def get_bank_account(
    session: AsyncSession, party_ref: str, account_id: uuid.UUID
) -> schemas.BankAccountDetail:
    await outside_transaction(session)
    found = await repo.bank_account_with_history(session, party_ref, account_id)
    if found is None:
        raise BankAccountNotFound("No bank account with this id.")
    account, entries = found
    return schemas.BankAccountDetail(
        **bank_account_out(account).model_dump(),
        history=[
            schemas.BankAccountHistoryEntryOut(
                from_status=BankAccountStatus(h.from_status) if h.from_status else None,
                to=BankAccountStatus(h.to_status),
                source=h.source,
                reason_code=h.reason_code,
                event_id=h.event_id,
                note=h.note,
                at=h.recorded_at,
            )
            for h in entries
        ],
    )


async def unlink(
    session: AsyncSession,
    bakkt: BakktClient,
    terms: ClaimTerms,
    party_ref: str,
    account_id: uuid.UUID,
    idem: IdempotentRequest,
) -> Result:
    """Unlink the party's current account. Bakkt's unlink acts on the current account
    whatever it is told, so it is called only when `account_id` is that one; any other
    account is no longer linked at Bakkt, and unlinking it changes nothing. Done (the account
    as it is now), replayed, or in progress elsewhere."""
    claimed = await idempotency.claim(session, idem, terms)
    if not isinstance(claimed, KeyClaim):
        return claimed
    try:
        account = await repo.get_bank_account(session, party_ref, account_id)
        if account is None:
            raise BankAccountNotFound("No bank account with this id.")
        if account.status == BankAccountStatus.PENDING:
            raise BankAccountLinkPending(
                "Wait for the link to finish (or fail) before removing it.",
                retry_after=LINK_PENDING_RETRY_AFTER,
            )
        current = await repo.linked_bank_account(session, party_ref)
    except AppError:
        await idempotency.release(session, claimed)
        raise
    # A DISABLED account may still be the one Bakkt holds (not every return code makes
    # Bakkt unlink it), unless a LINKED one has replaced it since.
    is_current = account.status == BankAccountStatus.LINKED or (
        account.status == BankAccountStatus.DISABLED and current is None
    )
    if not is_current:
        return await _finish(session, claimed, Done(schemas.dump(bank_account_out(account))))
    await session.commit()
    try:
        await bakkt.unlink(party_ref, account.link_ref, Instrument.ACH)
    except BakktRejected as exc:
        # Bakkt holds no link for the party: what we wanted is already true.
        if exc.code != "no_linked_bank_account":
            await idempotency.release(session, claimed)
            raise rejection_error(exc) from None
    except BakktError as exc:
        # Unlinking is naturally idempotent: the consumer may simply retry.
        await idempotency.release(session, claimed)
        raise unavailable_error(exc) from None
    locked = await repo.lock_bank_account(session, party_ref, account_id)
    assert locked is not None  # noqa: S101 - bank accounts are never deleted once linked
    if locked.status in (BankAccountStatus.LINKED, BankAccountStatus.DISABLED):
        repo.add_bank_account_history(
            session,
            account_id=locked.id,
            from_status=locked.status,
            to_status=BankAccountStatus.UNLINKED,
            source=HistorySource.API,
            note="unlinked at the consumer's request",
        )
        locked.status = BankAccountStatus.UNLINKED
        locked.updated_at = utcnow()
    return await _finish(session, claimed, Done(schemas.dump(bank_account_out(locked))))


async def get_party(session: AsyncSession, party_ref: str) -> schemas.PartyOut:
    await outside_transaction(session)
    party = await repo.get_party(session, party_ref)
    account = await repo.linked_bank_account(session, party_ref)
    return party_out(party_ref, party, account)


# --- reads ----------------------------------------------------------------------------------


async def list_transactions(
    session: AsyncSession, party_ref: str, q: schemas.TransactionQuery
) -> schemas.TransactionPage:
    before = decode_cursor(q.cursor) if q.cursor else None
    await outside_transaction(session)
    rows = await repo.list_transactions(
        session,
        party_ref,
        limit=q.limit + 1,
        before=before,
        statuses=[str(v) for v in q.status],
        types=[str(v) for v in q.type],
        created_from=q.created_from,
        created_to=q.created_to,
    )
    page: Sequence[Transaction] = rows[: q.limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > q.limit else None
    return schemas.TransactionPage(
        items=[transaction_out(t) for t in page], next_cursor=next_cursor
    )


async def get_transaction(
    session: AsyncSession, party_ref: str, transaction_id: uuid.UUID
) -> schemas.TransactionDetail:
    await outside_transaction(session)
    rows = await repo.transaction_with_history(session, party_ref, transaction_id)
    if not rows:
        raise TransactionNotFound("No transaction with this id.")
    return transaction_detail(rows)


async def balance(bakkt: BakktClient, party_ref: str) -> schemas.BalanceOut:
    try:
        found = await bakkt.balance(party_ref)
    except BakktError as exc:
        raise unavailable_error(exc) from None
    return schemas.BalanceOut(
        currency=found.currency,
        settled=f"{found.settled:.2f}",
        unsettled=f"{found.unsettled:.2f}",
    )


async def wire_instructions(
    session: AsyncSession, bakkt: BakktClient, party_ref: str
) -> schemas.WireInstructionsOut:
    await outside_transaction(session)
    party = await repo.get_party(session, party_ref)
    await session.commit()
    if party is not None:
        # Instructions are for depositing: the same gate as a deposit.
        _gate(party, Direction.DEPOSIT)
    try:
        found = await bakkt.wire_instructions(party_ref)
    except BakktError as exc:
        raise unavailable_error(exc) from None
    return schemas.WireInstructionsOut(
        reference_number=found.reference_number,
        routing_number=found.routing_number,
        account_number=found.account_number,
        swift_code=found.swift_code,
        bank_name=found.bank_name,
        bank_address=found.bank_address,
        beneficiary_name=found.beneficiary_name,
        beneficiary_address=found.beneficiary_address,
    )
