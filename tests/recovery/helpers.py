"""Helpers of the recovery tests: transactions written as the funding API writes them."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from app.bakkt import BakktClient, TransferDirection, TransferMethod, TransferRequest
from app.core.metrics import PREFIX, Metrics

Execute = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Row:
    id: str
    party: str
    ref: str
    key: str
    cents: int
    type: str
    method: str

    def request(self) -> TransferRequest:
        return TransferRequest(
            party_ref=self.party,
            transaction_ref=self.ref,
            idempotency_key=self.key,
            direction=TransferDirection.DEPOSIT
            if self.type == "DEPOSIT"
            else TransferDirection.WITHDRAW,
            method=TransferMethod(self.method),
            amount=Decimal(self.cents) / 100,
        )


async def add_party(run: Execute, party: str) -> None:
    await run(
        "INSERT INTO parties (party_ref, status) VALUES (:p, 'ACTIVE') ON CONFLICT DO NOTHING",
        {"p": party},
    )


async def add_bank_account(run: Execute, party: str) -> str:
    account_id = str(uuid.uuid4())
    await add_party(run, party)
    await run(
        "INSERT INTO bank_accounts (id, party_ref, link_ref, link_method, status) "
        "VALUES (:id, :p, :id, 'PLAID', 'LINKED')",
        {"id": account_id, "p": party},
    )
    return account_id


async def link_at_bakkt(bakkt: BakktClient, party: str) -> None:
    """A linked bank account at the sandbox, so it accepts ACH transfers for the party."""
    await bakkt.link_plaid(party, f"link-{uuid.uuid4().hex[:8]}", "processor-sandbox-ok")


async def add_transfer(
    run: Execute,
    party: str,
    *,
    status: str,
    cents: int = 2500,
    type_: str = "DEPOSIT",
    method: str = "ACH",
    age: timedelta = timedelta(minutes=5),
    due_in: timedelta = timedelta(seconds=-1),
    bank_account_id: str | None = None,
) -> Row:
    """A partner-started transaction as the funding API writes it: its ref and Bakkt key derived
    from its id, created `age` ago, next looked at `due_in` from now (negative: due)."""
    txn_id = str(uuid.uuid4())
    key = str(uuid.uuid5(uuid.NAMESPACE_URL, txn_id))
    await add_party(run, party)
    await run(
        "INSERT INTO transactions (id, party_ref, type, method, origin, status, amount_cents, "
        "currency, bakkt_ref, bakkt_idempotency_key, bank_account_id, submit_attempts, "
        "next_check_at, created_at, updated_at) VALUES (CAST(:id AS uuid), :p, :type, :method, "
        "'PARTNER', :status, :cents, 'USD', :id, :key, CAST(:bank AS uuid), 1, "
        "clock_timestamp() + CAST(:due AS interval), "
        "clock_timestamp() - CAST(:age AS interval), clock_timestamp() - CAST(:age AS interval))",
        {
            "id": txn_id,
            "p": party,
            "type": type_,
            "method": method,
            "status": status,
            "cents": cents,
            "key": key,
            "bank": bank_account_id,
            "due": due_in,
            "age": age,
        },
    )
    await run(
        "INSERT INTO transaction_history (transaction_id, from_status, to_status, source, note) "
        "VALUES (CAST(:id AS uuid), NULL, 'SUBMITTING', 'api', 'requested by the consumer')",
        {"id": txn_id},
    )
    return Row(txn_id, party, txn_id, key, cents, type_, method)


async def row_of(run: Execute, txn_id: str) -> dict[str, Any]:
    rows = await run(
        "SELECT status, reason_code, next_check_at, check_attempts, submit_attempts, "
        "held_for_review, related_transaction_id, type, amount_cents, created_at "
        "FROM transactions WHERE id = CAST(:id AS uuid)",
        {"id": txn_id},
    )
    return dict(rows[0]._mapping)


async def history_of(run: Execute, txn_id: str) -> list[tuple[str | None, str, str, bool]]:
    rows = await run(
        "SELECT from_status, to_status, source, applied FROM transaction_history "
        "WHERE transaction_id = CAST(:id AS uuid) ORDER BY id",
        {"id": txn_id},
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


async def alerts_about(run: Execute, kind: str, txn_id: str) -> int:
    rows = await run(
        "SELECT count(*) FROM operator_alerts WHERE kind = :kind AND subject = :subject",
        {"kind": kind, "subject": f"transaction {txn_id}"},
    )
    return int(rows[0][0])


async def db_now(run: Execute) -> datetime:
    rows = await run("SELECT clock_timestamp()")
    value: datetime = rows[0][0]
    return value


def counter_by_label(metrics: Metrics, name: str, label: str) -> dict[str, int]:
    """A counter's series split by one label; the series still at 0 (every known label set
    exists from the start) are left out."""
    out: dict[str, int] = {}
    full = PREFIX + name
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name != full or not sample.value:
                continue
            key = sample.labels.get(label, "")
            out[key] = out.get(key, 0) + int(sample.value)
    return out
