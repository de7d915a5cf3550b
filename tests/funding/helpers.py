"""Helpers of the funding API tests."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

Execute = Callable[..., Awaitable[Any]]


def key() -> str:
    return f"key-{uuid.uuid4()}"


def with_key(headers: dict[str, str], idempotency_key: str | None = None) -> dict[str, str]:
    return {**headers, "Idempotency-Key": idempotency_key or key()}


async def link_account(
    http: httpx.AsyncClient, run: Execute, party_ref: str, headers: dict[str, str]
) -> str:
    """Link a bank account at the sandbox through the API, then play Bakkt's LINKED webhook
    (issue 6's receiver) by writing what it would write. Returns the bank account id."""
    response = await http.post(
        f"/v1/parties/{party_ref}/bank-accounts",
        json={"processorToken": f"processor-sandbox-{uuid.uuid4().hex}"},
        headers=with_key(headers),
    )
    assert response.status_code == 202, response.text
    account_id = str(response.json()["id"])
    await run(
        "UPDATE bank_accounts SET status = 'LINKED', bank_name = 'First Platypus Bank', "
        "account_mask = '1234', account_type = 'CHECKING' WHERE id = :id",
        {"id": account_id},
    )
    return account_id


async def insert_linked_account(run: Execute, party_ref: str) -> str:
    """A party and a LINKED account in our database only (for tests that never reach Bakkt's
    link)."""
    account_id = str(uuid.uuid4())
    await run(
        "INSERT INTO parties (party_ref, status) VALUES (:p, 'ACTIVE') ON CONFLICT DO NOTHING",
        {"p": party_ref},
    )
    await run(
        "INSERT INTO bank_accounts (id, party_ref, link_ref, link_method, status) "
        "VALUES (:id, :p, :ref, 'PLAID', 'LINKED')",
        {"id": account_id, "p": party_ref, "ref": account_id},
    )
    return account_id
