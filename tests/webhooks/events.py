"""Webhook bodies shaped exactly as the sandbox sends them (docs/bakkt-contract.md A5, A6),
signing, the rows the partner writes before Bakkt answers, and the recorded flows of
docs/bakkt-contract.md A5."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.config import DEV_WEBHOOK_SECRET, webhook_secret_key
from app.funding.models import BankAccount, Party, Transaction, TransactionHistory
from app.webhooks.verify import sign

T0 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
URL = "/webhooks/bakkt"


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def fiat(
    request_id: str,
    *,
    party: str,
    ref: str,
    kind: str,
    status: str,
    amount: str,
    at: datetime,
    related: str | None = None,
    reason: str | None = None,
    reason_description: str | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "partnerPartyRef": party,
        "partnerWebhookType": "FIAT_EVENT",
        "eventTime": iso(at),
        "partnerTransactionRef": ref,
        "relatedPartnerTransactionRef": related,
        "fiatTransactionType": kind,
        "transactionStatus": status,
        "amount": float(Decimal(amount)),
        "currency": "USD",
        "reasonCode": reason,
        "reasonDescription": reason_description,
        "createdAt": iso(created or T0),
        "updatedAt": iso(at),
    }


def party_event(
    request_id: str, *, party: str, status: str, reason: str, at: datetime
) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "partnerPartyRef": party,
        "partnerWebhookType": "PARTY_EVENT",
        "eventTime": iso(at),
        "partyStatus": status,
        "reasonCode": reason,
        "verificationURL": None,
        "verificationURLExpiry": None,
    }


def link_event(
    request_id: str,
    *,
    party: str,
    link_ref: str,
    status: str,
    at: datetime,
    reason: str | None = None,
    bank: str | None = "First Platypus Bank",
    mask: str | None = "6789",
    account_type: str | None = "CHECKING",
) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "partnerPartyRef": party,
        "partnerWebhookType": "BANK_ACCOUNT_LINK",
        "eventTime": iso(at),
        "partnerTransactionRef": link_ref,
        "linkStatus": status,
        "reasonCode": reason,
        "bankName": bank,
        "accountMask": mask,
        "accountType": account_type,
    }


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def signed_headers(
    body: bytes,
    *,
    msg_id: str,
    secrets: Sequence[str] = (DEV_WEBHOOK_SECRET,),
    timestamp: int | None = None,
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    signatures = " ".join(sign(webhook_secret_key(s), msg_id, ts, body) for s in secrets)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signatures,
    }


async def deliver(
    http: httpx.AsyncClient, event: dict[str, Any], **sign_options: Any
) -> httpx.Response:
    body = encode(event)
    headers = signed_headers(body, msg_id=str(event["requestId"]), **sign_options)
    return await http.post(URL, content=body, headers=headers)


def new_secret() -> str:
    import base64
    import secrets as _secrets

    return "whsec_" + base64.b64encode(_secrets.token_bytes(32)).decode()


# -- what the partner wrote before Bakkt's events -------------------------------------------------


@dataclass(frozen=True)
class SeedAccount:
    party: str
    link_ref: str
    status: str = "LINKED"


@dataclass(frozen=True)
class SeedTransaction:
    party: str
    ref: str
    type: str
    method: str
    amount_cents: int
    status: str = "PENDING"
    link_ref: str | None = None


@dataclass
class Flow:
    name: str
    parties: list[str]
    accounts: list[SeedAccount] = field(default_factory=list)
    transactions: list[SeedTransaction] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    # ref -> status of what the flow must end in, delivered in order.
    expect_transactions: dict[str, str] = field(default_factory=dict)
    expect_accounts: dict[str, str] = field(default_factory=dict)
    expect_parties: dict[str, str] = field(default_factory=dict)


async def seed(session: AsyncSession, flows: Sequence[Flow]) -> None:
    """The rows the funding API would have written (parties, links, intents) before Bakkt spoke.
    Parties Bakkt tells us about first (inbound wires, hosted links) are not seeded."""
    seeded_parties = {a.party for f in flows for a in f.accounts} | {
        t.party for f in flows for t in f.transactions
    }
    for flow in flows:
        seeded_parties |= {p for p in flow.parties if p.startswith("known-")}
    for ref in sorted(seeded_parties):
        # A party Bakkt already told us about (its row exists) is left as it is.
        await session.execute(
            insert(Party).values(party_ref=ref, status="ACTIVE").on_conflict_do_nothing()
        )
    accounts: dict[str, uuid.UUID] = {}
    for flow in flows:
        for acc in flow.accounts:
            row = BankAccount(
                id=uuid.uuid4(),
                party_ref=acc.party,
                link_ref=acc.link_ref,
                link_method="PLAID",
                status=acc.status,
            )
            session.add(row)
            accounts[acc.link_ref] = row.id
    await session.flush()
    for flow in flows:
        for t in flow.transactions:
            txn = Transaction(
                id=uuid.uuid4(),
                party_ref=t.party,
                type=t.type,
                method=t.method,
                origin="PARTNER",
                status=t.status,
                amount_cents=t.amount_cents,
                currency="USD",
                bakkt_ref=t.ref,
                bakkt_idempotency_key=f"idem-{t.ref}",
                bank_account_id=accounts.get(t.link_ref) if t.link_ref else None,
            )
            session.add(txn)
            await session.flush()
            session.add(
                TransactionHistory(
                    transaction_id=txn.id,
                    from_status=None,
                    to_status=t.status,
                    source="api",
                )
            )
    await session.flush()
    await session.commit()


def flows(ns: str = "") -> list[Flow]:
    """Every flow of docs/bakkt-contract.md A5, each on its own party; `ns` keeps refs unique
    when the data is committed (the burst test)."""
    s = f"-{ns}" if ns else ""
    out: list[Flow] = []

    def at(flow_no: int, step: int) -> datetime:
        return T0 + timedelta(minutes=flow_no, seconds=step)

    def ev(flow_no: int, step: int) -> str:
        return f"evt{s}-{flow_no:02d}-{step}"

    # 1. ACH deposit: accepted, settled T+3.
    p, ref = f"known-dep{s}", f"t-dep{s}"
    out.append(
        Flow(
            "ach_deposit",
            [p],
            [SeedAccount(p, f"link-dep{s}")],
            [SeedTransaction(p, ref, "DEPOSIT", "ACH", 2500, link_ref=f"link-dep{s}")],
            [
                fiat(ev(1, 1), party=p, ref=ref, kind="ACH_DEPOSIT", status="PENDING",
                     amount="25.00", at=at(1, 1)),
                fiat(ev(1, 2), party=p, ref=ref, kind="ACH_DEPOSIT", status="COMPLETE",
                     amount="25.00", at=at(1, 2)),
            ],
            expect_transactions={ref: "COMPLETED"},
        )
    )  # fmt: skip
    # 2. ACH withdraw; the intent is still SUBMITTING when Bakkt's events arrive.
    p, ref = f"known-wd{s}", f"t-wd{s}"
    out.append(
        Flow(
            "ach_withdraw",
            [p],
            [SeedAccount(p, f"link-wd{s}")],
            [SeedTransaction(p, ref, "WITHDRAWAL", "ACH", 1500, "SUBMITTING", f"link-wd{s}")],
            [
                fiat(ev(2, 1), party=p, ref=ref, kind="ACH_WITHDRAW", status="PENDING",
                     amount="15", at=at(2, 1)),
                fiat(ev(2, 2), party=p, ref=ref, kind="ACH_WITHDRAW", status="COMPLETE",
                     amount="15", at=at(2, 2)),
            ],
            expect_transactions={ref: "COMPLETED"},
        )
    )  # fmt: skip
    # 3. ACH decline.
    p, ref = f"known-dec{s}", f"t-dec{s}"
    out.append(
        Flow(
            "ach_decline",
            [p],
            [SeedAccount(p, f"link-dec{s}")],
            [SeedTransaction(p, ref, "DEPOSIT", "ACH", 2501, link_ref=f"link-dec{s}")],
            [
                fiat(ev(3, 1), party=p, ref=ref, kind="ACH_DEPOSIT", status="PENDING",
                     amount="25.01", at=at(3, 1)),
                fiat(ev(3, 2), party=p, ref=ref, kind="ACH_DEPOSIT", status="DECLINED",
                     amount="25.01", at=at(3, 2), reason="RISK_DECLINED",
                     reason_description="Declined by Bakkt risk checks"),
            ],
            expect_transactions={ref: "DECLINED"},
        )
    )  # fmt: skip
    # 4. ACH cancel.
    p, ref = f"known-can{s}", f"t-can{s}"
    out.append(
        Flow(
            "ach_cancel",
            [p],
            [SeedAccount(p, f"link-can{s}")],
            [SeedTransaction(p, ref, "DEPOSIT", "ACH", 2502, link_ref=f"link-can{s}")],
            [
                fiat(ev(4, 1), party=p, ref=ref, kind="ACH_DEPOSIT", status="PENDING",
                     amount="25.02", at=at(4, 1)),
                fiat(ev(4, 2), party=p, ref=ref, kind="ACH_DEPOSIT", status="CANCELLED",
                     amount="25.02", at=at(4, 2), reason="CANCELLED"),
            ],
            expect_transactions={ref: "CANCELLED"},
        )
    )  # fmt: skip
    # 5. ACH return before settlement, R02 (account closed): Bakkt also unlinks the account.
    p, ref, link = f"known-rb{s}", f"t-rb{s}", f"link-rb{s}"
    out.append(
        Flow(
            "return_before_completion",
            [p],
            [SeedAccount(p, link)],
            [SeedTransaction(p, ref, "DEPOSIT", "ACH", 2503, link_ref=link)],
            [
                fiat(ev(5, 1), party=p, ref=ref, kind="ACH_DEPOSIT", status="PENDING",
                     amount="25.03", at=at(5, 1)),
                fiat(ev(5, 2), party=p, ref=ref, kind="ACH_DEPOSIT", status="RETURNED",
                     amount="25.03", at=at(5, 2), reason="R02",
                     reason_description="Account closed"),
                link_event(ev(5, 3), party=p, link_ref=link, status="UNLINKED", reason="R02",
                           at=at(5, 3)),
            ],
            expect_transactions={ref: "RETURNED"},
            expect_accounts={link: "DISABLED"},
        )
    )  # fmt: skip
    # 6. ACH return after completion, R10 (unauthorized), followed by its fee.
    p, ref, link, fee = f"known-ra{s}", f"t-ra{s}", f"link-ra{s}", f"bakkt-fee-ra{s}"
    out.append(
        Flow(
            "return_after_completion",
            [p],
            [SeedAccount(p, link)],
            [SeedTransaction(p, ref, "DEPOSIT", "ACH", 2504, link_ref=link)],
            [
                fiat(ev(6, 1), party=p, ref=ref, kind="ACH_DEPOSIT", status="PENDING",
                     amount="25.04", at=at(6, 1)),
                fiat(ev(6, 2), party=p, ref=ref, kind="ACH_DEPOSIT", status="COMPLETE",
                     amount="25.04", at=at(6, 2)),
                fiat(ev(6, 3), party=p, ref=ref, kind="ACH_DEPOSIT", status="RETURNED",
                     amount="25.04", at=at(6, 3), reason="R10"),
                fiat(ev(6, 4), party=p, ref=fee, kind="ACH_RETURN_FEE", status="COMPLETE",
                     amount="15.00", at=at(6, 3), related=ref, reason="R10",
                     created=at(6, 3)),
            ],
            expect_transactions={ref: "RETURNED", fee: "COMPLETED"},
            expect_accounts={link: "LINKED"},
        )
    )  # fmt: skip
    # 7. Inbound wire: Bakkt starts it, for a party we have never seen.
    p, ref = f"wire-in{s}", f"bakkt-wire-in{s}"
    out.append(
        Flow(
            "inbound_wire",
            [p],
            events=[
                fiat(ev(7, 1), party=p, ref=ref, kind="WIRE_DEPOSIT", status="PENDING",
                     amount="1000.00", at=at(7, 1), created=at(7, 1)),
                fiat(ev(7, 2), party=p, ref=ref, kind="WIRE_DEPOSIT", status="COMPLETE",
                     amount="1000.00", at=at(7, 2), created=at(7, 1)),
            ],
            expect_transactions={ref: "COMPLETED"},
            expect_parties={p: "ACTIVE"},
        )
    )  # fmt: skip
    # 8. Wire withdraw.
    p, ref = f"known-ww{s}", f"t-ww{s}"
    out.append(
        Flow(
            "wire_withdraw",
            [p],
            transactions=[SeedTransaction(p, ref, "WITHDRAWAL", "WIRE", 100_000)],
            events=[
                fiat(ev(8, 1), party=p, ref=ref, kind="WIRE_WITHDRAW", status="PENDING",
                     amount="1000", at=at(8, 1)),
                fiat(ev(8, 2), party=p, ref=ref, kind="WIRE_WITHDRAW", status="COMPLETE",
                     amount="1000", at=at(8, 2)),
            ],
            expect_transactions={ref: "COMPLETED"},
        )
    )  # fmt: skip
    # 9. Party suspended, then reinstated: a late suspension must not undo the reinstatement.
    p = f"known-sus{s}"
    out.append(
        Flow(
            "party_suspension",
            [p],
            events=[
                party_event(ev(9, 1), party=p, status="ACTIVE", reason="ENROLLMENT", at=at(9, 1)),
                party_event(ev(9, 2), party=p, status="SUSPENDED", reason="COMPLIANCE_LOCKED",
                            at=at(9, 2)),
                party_event(ev(9, 3), party=p, status="ACTIVE", reason="ENROLLMENT", at=at(9, 3)),
            ],
            expect_parties={p: "ACTIVE"},
        )
    )  # fmt: skip
    # 10. Party suspended, then liquidated (it may only withdraw from now on).
    p = f"liq{s}"
    out.append(
        Flow(
            "party_liquidation",
            [p],
            events=[
                party_event(ev(10, 1), party=p, status="ACTIVE", reason="ENROLLMENT",
                            at=at(10, 1)),
                party_event(ev(10, 2), party=p, status="SUSPENDED", reason="OTHER", at=at(10, 2)),
                party_event(ev(10, 3), party=p, status="LIQUIDATED", reason="LIQUIDATED",
                            at=at(10, 3)),
            ],
            expect_parties={p: "LIQUIDATED"},
        )
    )  # fmt: skip
    # 11. Link success: one the partner started (row PENDING), one from Bakkt's hosted page.
    # Bakkt keeps one account per party: the later link replaces the first, in any order.
    p, link, hosted = f"known-lk{s}", f"link-ok{s}", f"link-hosted{s}"
    out.append(
        Flow(
            "link_success",
            [p],
            [SeedAccount(p, link, "PENDING")],
            events=[
                link_event(ev(11, 1), party=p, link_ref=link, status="LINKED", at=at(11, 1)),
                link_event(ev(11, 2), party=p, link_ref=hosted, status="LINKED", at=at(11, 2),
                           bank="Second Wombat Bank", mask="****4321", account_type="SAVINGS"),
            ],
            expect_accounts={link: "REPLACED", hosted: "LINKED"},
        )
    )  # fmt: skip
    # 12. Link failure (unsupported bank), then a successful link of another account.
    p, bad, good = f"known-lf{s}", f"link-bad{s}", f"link-good{s}"
    out.append(
        Flow(
            "link_failure",
            [p],
            [SeedAccount(p, bad, "PENDING"), SeedAccount(p, good, "PENDING")],
            events=[
                link_event(ev(12, 1), party=p, link_ref=bad, status="FAILED", at=at(12, 1),
                           reason="UNSUPPORTED_FINANCIAL_INSTITUTION"),
                link_event(ev(12, 2), party=p, link_ref=good, status="LINKED", at=at(12, 2)),
                link_event(ev(12, 3), party=p, link_ref=good, status="UNLINKED", at=at(12, 3)),
            ],
            expect_accounts={bad: "FAILED", good: "UNLINKED"},
        )
    )  # fmt: skip
    # 13. A write-off Bakkt books against an earlier returned deposit of this party.
    p, ref, wo = f"known-wo{s}", f"t-wo{s}", f"bakkt-wo{s}"
    out.append(
        Flow(
            "write_off",
            [p],
            transactions=[SeedTransaction(p, ref, "DEPOSIT", "ACH", 5000, "PENDING")],
            events=[
                fiat(ev(13, 1), party=p, ref=ref, kind="ACH_DEPOSIT", status="RETURNED",
                     amount="50", at=at(13, 1), reason="R01"),
                fiat(ev(13, 2), party=p, ref=wo, kind="PARTNER_WRITE_OFF", status="PENDING",
                     amount="50", at=at(13, 2), related=ref, created=at(13, 2)),
                fiat(ev(13, 3), party=p, ref=wo, kind="PARTNER_WRITE_OFF", status="COMPLETE",
                     amount="50", at=at(13, 3), related=ref, created=at(13, 2)),
            ],
            expect_transactions={ref: "RETURNED", wo: "COMPLETED"},
        )
    )  # fmt: skip
    return out


# -- reading the outcome -------------------------------------------------------------------------


async def final_state(conn: AsyncConnection, parties: Sequence[str]) -> dict[str, Any]:
    """Everything the events may have changed for these parties, keyed by Bakkt's refs."""
    txn, rel = Transaction.__table__, Transaction.__table__.alias("rel")
    rows = await conn.execute(
        select(
            txn.c.bakkt_ref, txn.c.party_ref, txn.c.type, txn.c.method, txn.c.origin,
            txn.c.status, txn.c.amount_cents, txn.c.currency, txn.c.reason_code,
            txn.c.reason_description, txn.c.held_for_review, txn.c.status_event_time,
            rel.c.bakkt_ref.label("related_ref"),
        )
        .select_from(txn.outerjoin(rel, rel.c.id == txn.c.related_transaction_id))
        .where(txn.c.party_ref.in_(parties))
    )  # fmt: skip
    acc = BankAccount.__table__
    accounts = await conn.execute(
        select(
            acc.c.link_ref, acc.c.party_ref, acc.c.link_method, acc.c.status, acc.c.needs_review,
            acc.c.bank_name, acc.c.account_mask, acc.c.account_type, acc.c.reason_code,
            acc.c.status_event_time,
        ).where(acc.c.party_ref.in_(parties))
    )  # fmt: skip
    par = Party.__table__
    party_rows = await conn.execute(
        select(par.c.party_ref, par.c.status, par.c.status_reason, par.c.status_event_time).where(
            par.c.party_ref.in_(parties)
        )
    )
    return {
        "transactions": {r.bakkt_ref: dict(r._mapping) for r in rows},
        "accounts": {r.link_ref: dict(r._mapping) for r in accounts},
        "parties": {r.party_ref: dict(r._mapping) for r in party_rows},
    }
