"""Applying events: row locks and the state machine, amount checks, parking and re-matching,
Bakkt-started transactions, ACH return codes, party and link status."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.alerts.models import OperatorAlert
from app.funding.models import BankAccount, Party, Transaction, TransactionHistory
from app.webhooks import service
from app.webhooks.models import WebhookEvent
from app.webhooks.service import MAX_ATTEMPTS, rematch_parked
from tests.webhooks.events import (
    T0,
    Flow,
    SeedAccount,
    SeedTransaction,
    deliver,
    fiat,
    link_event,
    party_event,
    seed,
)

P = "known-apply"
LINK = "link-apply"
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def _at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _dep(request_id: str, status: str, *, ref: str = "t-apply", **kw: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"amount": "25.00", "at": _at(int(request_id.split("-")[-1]))}
    options.update(kw)
    return fiat(request_id, party=P, ref=ref, kind="ACH_DEPOSIT", status=status, **options)


async def _seed_deposit(session: AsyncSession, status: str = "PENDING", **kw: Any) -> None:
    options: dict[str, Any] = {"link_ref": LINK}
    options.update(kw)
    await seed(
        session,
        [
            Flow(
                "apply",
                [P],
                [SeedAccount(P, LINK)],
                [SeedTransaction(P, "t-apply", "DEPOSIT", "ACH", 2500, status, **options)],
            )
        ],
    )


async def _txn(session: AsyncSession, ref: str) -> Transaction:
    row = await session.execute(
        select(Transaction)
        .where(Transaction.bakkt_ref == ref)
        .execution_options(populate_existing=True)
    )
    return row.scalar_one()


async def _account(session: AsyncSession, link_ref: str) -> BankAccount:
    row = await session.execute(
        select(BankAccount)
        .where(BankAccount.link_ref == link_ref)
        .execution_options(populate_existing=True)
    )
    return row.scalar_one()


async def _event(session: AsyncSession, request_id: str) -> WebhookEvent:
    row = await session.execute(
        select(WebhookEvent)
        .where(WebhookEvent.request_id == request_id)
        .execution_options(populate_existing=True)
    )
    return row.scalar_one()


async def _history(session: AsyncSession, txn: Transaction) -> list[TransactionHistory]:
    rows = await session.execute(
        select(TransactionHistory)
        .where(TransactionHistory.transaction_id == txn.id)
        .order_by(TransactionHistory.id)
    )
    return list(rows.scalars())


async def _alerts(session: AsyncSession, kind: str) -> list[OperatorAlert]:
    rows = await session.execute(select(OperatorAlert).where(OperatorAlert.kind == kind))
    return list(rows.scalars())


# -- the state machine ---------------------------------------------------------------------------


async def test_events_move_the_transaction_through_the_state_machine(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await _seed_deposit(session, status="SUBMITTING")
    assert (await deliver(client, _dep("e-1", "PENDING"))).json()["status"] == "APPLIED"
    assert (await deliver(client, _dep("e-2", "COMPLETE"))).json()["status"] == "APPLIED"
    txn = await _txn(session, "t-apply")
    assert txn.status == "COMPLETED"
    assert txn.status_event_time == _at(2)
    history = await _history(session, txn)
    assert [(h.from_status, h.to_status, h.source, h.event_id, h.applied) for h in history] == [
        (None, "SUBMITTING", "api", None, True),
        ("SUBMITTING", "PENDING", "webhook", "e-1", True),
        ("PENDING", "COMPLETED", "webhook", "e-2", True),
    ]


async def test_a_late_event_is_recorded_as_ignored_never_applied(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await _seed_deposit(session)
    await deliver(client, _dep("e-2", "COMPLETE"))
    late = await deliver(client, _dep("e-1", "PENDING"))
    assert late.json()["status"] == "IGNORED"
    txn = await _txn(session, "t-apply")
    assert txn.status == "COMPLETED"
    last = (await _history(session, txn))[-1]
    assert (last.event_id, last.applied, last.to_status) == ("e-1", False, "PENDING")
    assert "not allowed" in (last.note or "")


async def test_a_return_after_completion_moves_to_returned_with_its_r_code(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await _seed_deposit(session)
    await deliver(client, _dep("e-1", "COMPLETE"))
    await deliver(client, _dep("e-2", "RETURNED", reason="R01", reason_description="NSF"))
    txn = await _txn(session, "t-apply")
    assert (txn.status, txn.reason_code, txn.reason_description) == ("RETURNED", "R01", "NSF")


@pytest.mark.parametrize(
    ("ours", "bakkt"),
    [
        ("FAILED", "COMPLETE"),
        ("FAILED", "PENDING"),
        ("DECLINED", "COMPLETE"),
        ("COMPLETED", "CANCELLED"),
    ],
)
async def test_an_event_contradicting_our_final_state_is_flagged_not_applied(
    client: httpx.AsyncClient, session: AsyncSession, ours: str, bakkt: str
) -> None:
    await _seed_deposit(session, status=ours)
    response = await deliver(client, _dep("e-1", bakkt))
    assert response.json()["status"] == "IGNORED"
    assert (await _txn(session, "t-apply")).status == ours
    [alert] = await _alerts(session, "transaction_state_conflict")
    assert alert.data["ours"] == ours
    assert (await _event(session, "e-1")).needs_operator


@pytest.mark.parametrize(
    ("ours", "bakkt"),
    [("COMPLETED", "PENDING"), ("RETURNED", "COMPLETE"), ("DECLINED", "DECLINED")],
)
async def test_late_or_repeated_events_are_not_flagged(
    client: httpx.AsyncClient, session: AsyncSession, ours: str, bakkt: str
) -> None:
    await _seed_deposit(session, status=ours)
    assert (await deliver(client, _dep("e-1", bakkt))).json()["status"] == "IGNORED"
    assert await _alerts(session, "transaction_state_conflict") == []


# -- amount and currency checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"amount": "2500.00"}, "amount 2500"),
        ({"amount": "25.001"}, "amount 25.001"),
        ({"currency": "EUR"}, "currency EUR"),
        ({"kind": "ACH_WITHDRAW"}, "kind ACH_WITHDRAW"),
        ({"party": "someone-else"}, "party 'someone-else'"),
    ],
)
async def test_a_disagreeing_event_holds_the_transaction_and_raises_an_alert(
    client: httpx.AsyncClient, session: AsyncSession, changes: dict[str, str], words: str
) -> None:
    await _seed_deposit(session)
    event = _dep("e-1", "COMPLETE")
    event.update(
        {
            "amount": float(changes.get("amount", 25)),
            "currency": changes.get("currency", "USD"),
            "fiatTransactionType": changes.get("kind", "ACH_DEPOSIT"),
            "partnerPartyRef": changes.get("party", P),
        }
    )
    if "amount" in changes:
        # A float cannot carry 25.001 exactly; the wire can.
        body_amount = changes["amount"]
        event["amount"] = body_amount
    response = await deliver(client, event)
    assert response.status_code == 200
    assert response.json()["status"] == "HELD"
    txn = await _txn(session, "t-apply")
    assert txn.status == "PENDING"
    assert txn.held_for_review
    assert words in (txn.review_reason or "")
    [alert] = await _alerts(session, "transaction_held_for_review")
    assert alert.data["requestId"] == "e-1"
    assert (await _event(session, "e-1")).needs_operator
    last = (await _history(session, txn))[-1]
    assert (last.event_id, last.applied) == ("e-1", False)


# -- events that outran our own commit -----------------------------------------------------------


async def test_an_event_for_an_unknown_transaction_is_parked_then_rematched(
    client: httpx.AsyncClient,
    session: AsyncSession,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    parked = await deliver(client, _dep("e-1", "PENDING"))
    assert parked.json()["status"] == "PARKED"
    row = await _event(session, "e-1")
    assert row.next_attempt_at is not None
    assert row.next_attempt_at > row.received_at
    # Nothing is due yet: the retry waits for its backoff.
    assert await rematch_parked(session_factory, now=row.received_at) == 0

    await _seed_deposit(session, status="SUBMITTING")
    assert await rematch_parked(session_factory, now=FAR) == 1
    assert (await _event(session, "e-1")).status == "APPLIED"
    assert (await _txn(session, "t-apply")).status == "PENDING"


async def test_a_parked_event_is_handed_to_an_operator_after_its_attempts(
    client: httpx.AsyncClient,
    session: AsyncSession,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await deliver(client, _dep("e-1", "PENDING", ref="t-nobody-knows"))
    now = datetime.now(UTC)
    for _ in range(MAX_ATTEMPTS + 3):
        now += timedelta(hours=1)
        await rematch_parked(session_factory, now=now)
    row = await _event(session, "e-1")
    assert row.status == "UNMATCHED"
    assert row.needs_operator
    assert row.attempts == MAX_ATTEMPTS
    assert row.next_attempt_at is None
    [alert] = await _alerts(session, "webhook_unmatched")
    assert alert.data["transactionRef"] == "t-nobody-knows"


async def test_backoff_doubles_between_attempts(
    client: httpx.AsyncClient,
    session: AsyncSession,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await deliver(client, _dep("e-1", "PENDING", ref="t-later"))
    waits = []
    now = (await _event(session, "e-1")).next_attempt_at
    assert now is not None
    for _ in range(4):
        await rematch_parked(session_factory, now=now)
        due = (await _event(session, "e-1")).next_attempt_at
        assert due is not None
        waits.append((due - now).total_seconds())
        now = due
    assert waits == [2.0, 4.0, 8.0, 16.0]


async def test_a_stored_event_whose_apply_failed_is_applied_later(
    client: httpx.AsyncClient,
    session: AsyncSession,
    session_factory: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _seed_deposit(session)

    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("simulated crash while applying")

    monkeypatch.setattr(service, "_apply_fiat", broken)
    response = await deliver(client, _dep("e-1", "COMPLETE"))
    # Stored, so Bakkt has nothing to retry; our own sweep does.
    assert response.status_code == 200
    assert response.json()["status"] == "RECEIVED"
    row = await _event(session, "e-1")
    assert (row.status, row.attempts) == ("RECEIVED", 1)
    assert (await _txn(session, "t-apply")).status == "PENDING"

    monkeypatch.undo()
    assert await rematch_parked(session_factory, now=FAR) == 1
    assert (await _event(session, "e-1")).status == "APPLIED"
    assert (await _txn(session, "t-apply")).status == "COMPLETED"


async def test_an_event_stranded_between_intake_and_apply_is_swept_up(
    client: httpx.AsyncClient,
    session: AsyncSession,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    # What a process killed right after the intake commit leaves behind.
    await _seed_deposit(session)
    body = json.dumps(_dep("e-1", "COMPLETE")).encode()
    now = datetime.now(UTC)
    session.add(
        WebhookEvent(
            request_id="e-1",
            body=body,
            headers={},
            status="RECEIVED",
            received_at=now,
            next_attempt_at=now + service.STRANDED_AFTER,
        )
    )
    await session.commit()
    assert await rematch_parked(session_factory, now=now) == 0
    assert await rematch_parked(session_factory, now=now + service.STRANDED_AFTER) == 1
    assert (await _txn(session, "t-apply")).status == "COMPLETED"
    # Bakkt's redelivery of it is now a plain duplicate.
    again = await deliver(client, _dep("e-1", "COMPLETE"))
    assert again.json() == {
        "received": True,
        "requestId": "e-1",
        "duplicate": True,
        "status": "APPLIED",
    }


# -- transactions Bakkt starts -------------------------------------------------------------------


async def test_an_inbound_wire_creates_a_transaction_and_its_party(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    event = fiat(
        "w-1", party="fresh-party", ref="bakkt-wire-1", kind="WIRE_DEPOSIT", status="PENDING",
        amount="1234.56", at=_at(1), created=_at(0),
    )  # fmt: skip
    assert (await deliver(client, event)).json()["status"] == "APPLIED"
    txn = await _txn(session, "bakkt-wire-1")
    assert (txn.origin, txn.type, txn.method, txn.status) == ("BAKKT", "DEPOSIT", "WIRE", "PENDING")
    assert (txn.amount_cents, txn.currency, txn.party_ref) == (123456, "USD", "fresh-party")
    assert txn.created_at == _at(0)
    [created] = await _history(session, txn)
    assert (created.from_status, created.to_status, created.event_id) == (None, "PENDING", "w-1")
    party = await session.get(Party, "fresh-party", populate_existing=True)
    assert party is not None
    assert party.status == "ACTIVE"


@pytest.mark.parametrize(
    ("kind", "type_"),
    [
        ("ACH_RETURN_FEE", "RETURN_FEE"),
        ("PARTNER_WRITE_OFF", "PARTNER_WRITE_OFF"),
        ("BAKKT_WRITE_OFF", "BAKKT_WRITE_OFF"),
        ("DECEASED_PARTY", "DECEASED_PARTY"),
        ("OTHER_ADJUSTMENT", "ADJUSTMENT"),
    ],
)
async def test_fees_and_adjustments_become_transactions_linked_to_their_transfer(
    client: httpx.AsyncClient, session: AsyncSession, kind: str, type_: str
) -> None:
    await _seed_deposit(session, status="COMPLETED")
    event = fiat(
        "f-1", party=P, ref="bakkt-adj-1", kind=kind, status="COMPLETE", amount="15",
        at=_at(5), related="t-apply",
    )  # fmt: skip
    assert (await deliver(client, event)).json()["status"] == "APPLIED"
    adj = await _txn(session, "bakkt-adj-1")
    transfer = await _txn(session, "t-apply")
    assert (adj.type, adj.origin, adj.status, adj.amount_cents) == (
        type_,
        "BAKKT",
        "COMPLETED",
        1500,
    )
    assert adj.related_transaction_id == transfer.id


async def test_a_fee_before_its_transfer_is_created_and_linked_once_the_transfer_is_known(
    client: httpx.AsyncClient,
    session: AsyncSession,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    fee = fiat(
        "f-1", party=P, ref="bakkt-fee-1", kind="ACH_RETURN_FEE", status="COMPLETE", amount="15",
        at=_at(5), related="t-apply", reason="R01",
    )  # fmt: skip
    assert (await deliver(client, fee)).json()["status"] == "APPLIED"
    assert (await _txn(session, "bakkt-fee-1")).related_transaction_id is None
    # The transfer's own events were parked; once it is known, re-matching links the fee too.
    await deliver(client, _dep("e-1", "COMPLETE"))
    await _seed_deposit(session)
    await rematch_parked(session_factory, now=FAR)
    transfer = await _txn(session, "t-apply")
    assert transfer.status == "COMPLETED"
    assert (await _txn(session, "bakkt-fee-1")).related_transaction_id == transfer.id


async def test_rematch_links_a_fee_to_a_transfer_that_appeared_without_any_webhook(
    client: httpx.AsyncClient,
    session: AsyncSession,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    fee = fiat(
        "f-1", party=P, ref="bakkt-fee-3", kind="ACH_RETURN_FEE", status="COMPLETE", amount="15",
        at=_at(5), related="t-apply",
    )  # fmt: skip
    await deliver(client, fee)
    # As reconciliation would insert it: no event of its own ever names it.
    await _seed_deposit(session, status="RETURNED")
    assert await rematch_parked(session_factory) == 0
    transfer = await _txn(session, "t-apply")
    assert (await _txn(session, "bakkt-fee-3")).related_transaction_id == transfer.id


async def test_a_fee_is_linked_by_the_next_event_of_its_transfer(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    fee = fiat(
        "f-1", party=P, ref="bakkt-fee-2", kind="ACH_RETURN_FEE", status="COMPLETE", amount="15",
        at=_at(5), related="t-apply",
    )  # fmt: skip
    await deliver(client, fee)
    await _seed_deposit(session)
    await deliver(client, _dep("e-6", "RETURNED", reason="R01"))
    transfer = await _txn(session, "t-apply")
    assert (await _txn(session, "bakkt-fee-2")).related_transaction_id == transfer.id


async def test_a_bakkt_transaction_with_an_unrecordable_amount_is_flagged(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    event = fiat(
        "w-neg", party="p-neg", ref="bakkt-adj-neg", kind="OTHER_ADJUSTMENT", status="COMPLETE",
        amount="-5", at=_at(1),
    )  # fmt: skip
    assert (await deliver(client, event)).json()["status"] == "HELD"
    assert (await _event(session, "w-neg")).needs_operator
    assert len(await _alerts(session, "webhook_bad_amount")) == 1


# -- ACH return codes ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["R02", "R03", "R04", "R16", "R20", "R12", "R14", "R15"])
async def test_a_return_saying_the_account_is_unusable_disables_it(
    client: httpx.AsyncClient, session: AsyncSession, code: str
) -> None:
    await _seed_deposit(session)
    await deliver(client, _dep("e-1", "RETURNED", reason=code))
    account = await _account(session, LINK)
    assert (account.status, account.reason_code, account.needs_review) == ("DISABLED", code, False)


@pytest.mark.parametrize("code", ["R05", "R07", "R10", "R29"])
async def test_an_unauthorized_return_marks_the_account_for_review(
    client: httpx.AsyncClient, session: AsyncSession, code: str
) -> None:
    await _seed_deposit(session, status="COMPLETED")
    await deliver(client, _dep("e-1", "RETURNED", reason=code))
    account = await _account(session, LINK)
    assert (account.status, account.needs_review) == ("LINKED", True)
    assert (await _txn(session, "t-apply")).status == "RETURNED"


@pytest.mark.parametrize("code", ["R01", "R09", "RISK_DECLINED"])
async def test_other_returns_leave_the_account_alone(
    client: httpx.AsyncClient, session: AsyncSession, code: str
) -> None:
    await _seed_deposit(session)
    await deliver(client, _dep("e-1", "RETURNED", reason=code))
    account = await _account(session, LINK)
    assert (account.status, account.needs_review) == ("LINKED", False)


async def test_a_disabled_account_is_not_re_enabled_by_a_late_link_event(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await _seed_deposit(session)
    await deliver(client, _dep("e-5", "RETURNED", reason="R03"))
    late = link_event("l-1", party=P, link_ref=LINK, status="LINKED", at=_at(9))
    assert (await deliver(client, late)).json()["status"] == "IGNORED"
    account = await _account(session, LINK)
    assert account.status == "DISABLED"
    assert account.bank_name == "First Platypus Bank"


# -- parties -------------------------------------------------------------------------------------


async def test_party_events_set_status_and_reason_and_stale_ones_are_ignored(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    suspended = party_event(
        "pe-2", party="p-1", status="SUSPENDED", reason="COMPLIANCE_LOCKED", at=_at(2)
    )
    older = party_event("pe-1", party="p-1", status="ACTIVE", reason="ENROLLMENT", at=_at(1))
    assert (await deliver(client, suspended)).json()["status"] == "APPLIED"
    assert (await deliver(client, older)).json()["status"] == "IGNORED"
    party = await session.get(Party, "p-1", populate_existing=True)
    assert party is not None
    assert (party.status, party.status_reason, party.status_event_time) == (
        "SUSPENDED",
        "COMPLIANCE_LOCKED",
        _at(2),
    )


async def test_a_party_event_updates_a_party_the_partner_created(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    session.add(Party(party_ref="p-known", status="ACTIVE"))
    await session.commit()
    await deliver(
        client,
        party_event("pe-1", party="p-known", status="LIQUIDATED", reason="LIQUIDATED", at=_at(1)),
    )
    party = await session.get(Party, "p-known", populate_existing=True)
    assert party is not None
    assert party.status == "LIQUIDATED"


async def test_an_unknown_party_status_is_flagged_not_stored(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await deliver(
        client, party_event("pe-x", party="p-x", status="FROZEN", reason="OTHER", at=_at(1))
    )
    assert await session.get(Party, "p-x") is None
    assert (await _event(session, "pe-x")).needs_operator


async def test_same_instant_party_events_resolve_the_same_way_in_either_order(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    for party, order in (("p-a", ("SUSPENDED", "ACTIVE")), ("p-b", ("ACTIVE", "SUSPENDED"))):
        for status in order:
            await deliver(
                client,
                party_event(
                    f"pe-{party}-{status}", party=party, status=status, reason="X", at=_at(1)
                ),
            )
    a = await session.get(Party, "p-a", populate_existing=True)
    b = await session.get(Party, "p-b", populate_existing=True)
    assert a is not None
    assert b is not None
    assert a.status == b.status == "SUSPENDED"


# -- bank-account links --------------------------------------------------------------------------


async def test_a_link_event_for_a_known_account_moves_it_and_stores_only_the_last_four(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await seed(session, [Flow("l", [P], [SeedAccount(P, "link-new", "PENDING")])])
    event = link_event(
        "l-1", party=P, link_ref="link-new", status="LINKED", at=_at(1),
        bank="Third Quokka Bank", mask="000123456789", account_type="CHECKING",
    )  # fmt: skip
    assert (await deliver(client, event)).json()["status"] == "APPLIED"
    account = await _account(session, "link-new")
    assert (account.status, account.bank_name, account.account_mask, account.account_type) == (
        "LINKED",
        "Third Quokka Bank",
        "6789",
        "CHECKING",
    )
    assert account.status_event_time == _at(1)


async def test_a_hosted_link_creates_the_account_for_the_party(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    event = link_event(
        "l-1",
        party="p-hosted",
        link_ref="link-hosted-1",
        status="LINKED",
        at=_at(1),
        mask="****4321",
    )
    assert (await deliver(client, event)).json()["status"] == "APPLIED"
    account = await _account(session, "link-hosted-1")
    assert (account.party_ref, account.link_method, account.status, account.account_mask) == (
        "p-hosted",
        "HOSTED",
        "LINKED",
        "4321",
    )


async def test_a_failed_link_keeps_its_reason_and_a_stale_event_is_ignored(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await seed(session, [Flow("l", [P], [SeedAccount(P, "link-f", "PENDING")])])
    failed = link_event(
        "l-2", party=P, link_ref="link-f", status="FAILED", at=_at(2),
        reason="UNSUPPORTED_FINANCIAL_INSTITUTION", bank=None, mask=None, account_type=None,
    )  # fmt: skip
    older = link_event("l-1", party=P, link_ref="link-f", status="LINKED", at=_at(1))
    await deliver(client, failed)
    assert (await deliver(client, older)).json()["status"] == "IGNORED"
    account = await _account(session, "link-f")
    assert (account.status, account.reason_code) == ("FAILED", "UNSUPPORTED_FINANCIAL_INSTITUTION")
    # The stale event still filled in what the account lacked.
    assert account.account_mask == "6789"


async def test_a_link_event_naming_another_party_is_flagged(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await seed(session, [Flow("l", [P], [SeedAccount(P, "link-p", "PENDING")])])
    event = link_event("l-1", party="intruder", link_ref="link-p", status="UNLINKED", at=_at(1))
    assert (await deliver(client, event)).json()["status"] == "IGNORED"
    assert (await _account(session, "link-p")).status == "PENDING"
    assert len(await _alerts(session, "webhook_party_mismatch")) == 1


async def test_an_unlink_with_an_unusable_account_code_disables_the_account(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await seed(session, [Flow("l", [P], [SeedAccount(P, "link-u", "LINKED")])])
    await deliver(
        client,
        link_event("l-1", party=P, link_ref="link-u", status="UNLINKED", reason="R02", at=_at(1)),
    )
    account = await _account(session, "link-u")
    assert (account.status, account.reason_code) == ("DISABLED", "R02")
