"""Helpers of the admin tests: rows written as the service writes them, and reads of what an
action left behind."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from tests.recovery.helpers import Row, add_party, add_transfer, link_at_bakkt, row_of

Execute = Callable[..., Awaitable[Any]]

__all__ = [
    "Execute",
    "Row",
    "add_account",
    "add_alert",
    "add_party",
    "add_transfer",
    "history",
    "link_at_bakkt",
    "row_of",
]


async def add_account(
    run: Execute, party: str, *, status: str = "LINKED", reason_code: str | None = None
) -> str:
    account_id = str(uuid.uuid4())
    await add_party(run, party)
    await run(
        "INSERT INTO bank_accounts (id, party_ref, link_ref, link_method, status, reason_code) "
        "VALUES (CAST(:id AS uuid), :p, :id, 'PLAID', :status, :reason)",
        {"id": account_id, "p": party, "status": status, "reason": reason_code},
    )
    return account_id


async def add_alert(run: Execute, kind: str, subject: str) -> int:
    rows = await run(
        "INSERT INTO operator_alerts (kind, subject, detail, data) "
        "VALUES (:kind, :subject, 'look at it', '{}') RETURNING id",
        {"kind": kind, "subject": subject},
    )
    return int(rows[0][0])


async def history(run: Execute, table: str, owner: str, owner_id: str) -> list[dict[str, Any]]:
    """Every history row of a transaction (`transaction_history`, `transaction_id`) or a bank
    account (`bank_account_history`, `bank_account_id`), in the order written."""
    rows = await run(
        f"SELECT * FROM {table} WHERE {owner} = CAST(:id AS uuid) ORDER BY id",  # noqa: S608
        {"id": owner_id},
    )
    return [dict(r._mapping) for r in rows]
