"""How many round trips to Postgres a delivery makes, pinned (issue 11): a new FIAT_EVENT is one
transaction (insert, lock, move, history, outcome), a redelivery of an applied one one
statement between BEGIN and ROLLBACK. docs/performance.md has the table."""

from __future__ import annotations

import uuid
from collections import Counter

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.round_trips import RoundTrips, round_trips
from tests.webhooks.events import T0, deliver, fiat

__all__ = ["round_trips"]


async def _transfer(engine: AsyncEngine, party: str, ref: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO parties (party_ref, status) VALUES (:p, 'ACTIVE')"), {"p": party}
        )
        await conn.execute(
            text(
                "INSERT INTO transactions (id, party_ref, type, method, origin, status, "
                "amount_cents, currency, bakkt_ref) VALUES (:id, :p, 'DEPOSIT', 'ACH', "
                "'PARTNER', 'PENDING', 2500, 'USD', :ref)"
            ),
            {"id": str(uuid.uuid4()), "p": party, "ref": ref},
        )


async def test_a_new_event_is_eight_round_trips_and_a_redelivery_three(
    live_client: httpx.AsyncClient, engine: AsyncEngine, round_trips: RoundTrips
) -> None:
    ns = uuid.uuid4().hex[:8]
    party, ref = f"rt-{ns}", f"rt-ref-{ns}"
    await _transfer(engine, party, ref)
    warm_party, warm_ref = f"rt-warm-{ns}", f"rt-warm-ref-{ns}"
    await _transfer(engine, warm_party, warm_ref)

    def completed(request_id: str, party_ref: str, txn_ref: str) -> dict[str, object]:
        return fiat(
            request_id, party=party_ref, ref=txn_ref, kind="ACH_DEPOSIT", status="COMPLETE",
            amount="25.00", at=T0,
        )  # fmt: skip

    warm = completed(f"rt-warm-{ns}", warm_party, warm_ref)
    assert (await deliver(live_client, warm)).status_code == 200
    assert (await deliver(live_client, warm)).status_code == 200
    event = completed(f"rt-{ns}", party, ref)
    with round_trips.measure() as new:
        first = await deliver(live_client, event)
    assert first.json()["status"] == "APPLIED"
    with round_trips.measure() as again:
        second = await deliver(live_client, event)
    assert second.json()["duplicate"] is True
    # The insert (a CTE), the transaction's lock, the event's outcome, the move and its history,
    # and the move's `transaction.completed` event (the outbox's one INSERT per commit).
    assert new == Counter(
        {"BEGIN": 1, "WITH": 1, "SELECT": 1, "UPDATE": 2, "INSERT": 2, "COMMIT": 1}
    ), new
    assert again == Counter({"BEGIN": 1, "WITH": 1, "ROLLBACK": 1}), again
