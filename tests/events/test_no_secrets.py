"""No event holds an account number, a processor token or a token, stored or read."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bakkt_sandbox.testing import RunningSandbox
from tests.events.conftest import Feed
from tests.events.test_every_change import wait_for_types

ROUTING = "011000015"  # a valid ABA checksum


def digits(count: int) -> str:
    # Distinct enough that no other row can hold it by chance.
    return "7" + "".join(secrets.choice("0123456789") for _ in range(count - 1))


async def test_events_carry_no_account_number_processor_token_or_bearer_token(
    feed: Feed, sandbox: RunningSandbox, engine: AsyncEngine, party: str
) -> None:
    token = f"processor-sandbox-{uuid.uuid4().hex}"
    ach_number, wire_number = digits(16), digits(12)
    plaid = await feed.post(party, "/bank-accounts", {"processorToken": token})
    assert plaid.status_code == 202, plaid.text
    details = await feed.post(
        party,
        "/bank-accounts",
        {"routingNumber": ROUTING, "accountNumber": ach_number, "accountType": "CHECKING"},
    )
    assert details.status_code == 202, details.text
    await wait_for_types(feed, party, "bank_account.linked", "bank_account.replaced")
    await sandbox.credit(party, "100.00")
    wire = await feed.post(
        party,
        "/withdrawals",
        {
            "method": "WIRE",
            "amount": "20.00",
            "destination": {
                "routingNumber": ROUTING,
                "accountNumber": wire_number,
                "bankName": "First Platypus Bank",
            },
        },
    )
    assert wire.status_code == 202, wire.text
    await wait_for_types(feed, party, "transaction.created", "transaction.pending")

    read = (await feed.http.get(f"/v1/parties/{party}/events", headers=feed.auth(party))).text
    caught_up = (await feed.http.get("/v1/events", headers=feed.admin)).text
    async with engine.connect() as conn:
        stored = await conn.execute(
            text("SELECT string_agg(data::text, '') FROM events WHERE party_ref = :p"),
            {"p": party},
        )
        everything = str(stored.scalar_one())
    bearer = feed.auth(party)["Authorization"].removeprefix("Bearer ")
    for secret in (token, ach_number, wire_number, bearer):
        for where in (read, caught_up, everything):
            assert secret not in where
    # What they do carry: the last four digits the API shows.
    assert f'"accountMask": "{ach_number[-4:]}"' in everything
