"""The limits read running totals (`party_limit_usage`, kept by migration 0012's trigger) instead
of summing a party's history, and must say exactly what the sum says: whatever writes the rows
(SQL here, not the service), whatever their times, statuses and later moves."""

from __future__ import annotations

import random
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.funding import repository as repo
from app.funding.models import TransactionOrigin
from tests.funding.helpers import Execute

STATUSES = ["SUBMITTING", "UNKNOWN", "PENDING", "COMPLETED", "RETURNED", "FAILED", "DECLINED"]
# Where the windows start, and around them (minutes: far more than the test takes to run, so
# the clock moving between the writes and the read cannot carry a row across an edge).
EDGES = [24 * 60, 720 * 60]

# The sum over the party's history: what limit_usage read before the running totals.
ORACLE = """
    SELECT coalesce(sum(amount_cents)
                    FILTER (WHERE created_at >= clock_timestamp() - interval '24 hours'), 0),
           coalesce(sum(amount_cents)
                    FILTER (WHERE created_at >= clock_timestamp() - interval '720 hours'), 0)
    FROM transactions
    WHERE party_ref = :p AND type = :d AND origin = 'PARTNER'
      AND status NOT IN ('FAILED', 'DECLINED', 'CANCELLED')
    """


def _minutes_ago(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.4:
        edge = rng.choice(EDGES)
        return edge + rng.choice([-1, 1]) * rng.uniform(5, 90)
    if pick < 0.5:
        return rng.uniform(0, 5)
    return rng.uniform(0, 800 * 60)


async def _insert(sql: Execute, party: str, rng: random.Random) -> str:
    txn_id = str(uuid.uuid4())
    await sql(
        "INSERT INTO transactions (id, party_ref, type, method, origin, status, amount_cents,"
        " currency, bakkt_ref, created_at, updated_at) VALUES (:id, :p, :type, 'ACH', :origin,"
        " :status, :cents, 'USD', :ref, clock_timestamp() - make_interval(mins => :ago),"
        " clock_timestamp())",
        {
            "id": txn_id,
            "ref": txn_id,
            "p": party,
            "type": rng.choice(["DEPOSIT", "WITHDRAWAL"]),
            "origin": "BAKKT" if rng.random() < 0.1 else str(TransactionOrigin.PARTNER),
            "status": rng.choice(STATUSES),
            "cents": rng.randrange(1, 500_000),
            "ago": _minutes_ago(rng),
        },
    )
    return txn_id


async def _agree(session: AsyncSession, sql: Execute, party: str) -> dict[str, Any]:
    seen = {}
    for direction in ("DEPOSIT", "WITHDRAWAL"):
        usage = await repo.limit_usage(session, party, direction)
        [(day, month)] = (await sql(ORACLE, {"p": party, "d": direction})).all()
        assert (usage.used_day_cents, usage.used_30_days_cents) == (day, month), direction
        seen[direction] = (day, month)
    return seen


async def test_the_running_totals_say_what_the_sum_over_history_says(
    session: AsyncSession, sql: Execute
) -> None:
    rng = random.Random(20261202)
    for round_ in range(3):
        party = f"p-totals-{round_}-{uuid.uuid4().hex[:8]}"
        await sql("INSERT INTO parties (party_ref, status) VALUES (:p, 'ACTIVE')", {"p": party})
        ids = [await _insert(sql, party, rng) for _ in range(120)]
        seen = await _agree(session, sql, party)
        assert all(month > 0 for _, month in seen.values())
        # Moves, as the state machine makes them and as an operator's SQL might: into and out
        # of what counts, a corrected amount, a row given to another party.
        for txn_id in rng.sample(ids, 60):
            change = rng.random()
            if change < 0.6:
                await sql(
                    "UPDATE transactions SET status = :s WHERE id = :id",
                    {"s": rng.choice([*STATUSES, "CANCELLED"]), "id": txn_id},
                )
            elif change < 0.8:
                await sql(
                    "UPDATE transactions SET amount_cents = :c WHERE id = :id",
                    {"c": rng.randrange(1, 500_000), "id": txn_id},
                )
            elif change < 0.9:
                await sql("DELETE FROM transactions WHERE id = :id", {"id": txn_id})
            else:
                await sql(
                    "UPDATE transactions SET next_check_at = clock_timestamp() WHERE id = :id",
                    {"id": txn_id},
                )
        await _agree(session, sql, party)


async def test_a_counted_transfer_that_fails_stops_counting(
    session: AsyncSession, sql: Execute
) -> None:
    party = f"p-totals-{uuid.uuid4().hex[:8]}"
    await sql("INSERT INTO parties (party_ref, status) VALUES (:p, 'ACTIVE')", {"p": party})
    rng = random.Random(7)
    counted = await _insert(sql, party, rng)
    await sql(
        "UPDATE transactions SET status = 'PENDING', origin = 'PARTNER', type = 'DEPOSIT',"
        " amount_cents = 1234, created_at = clock_timestamp() WHERE id = :id",
        {"id": counted},
    )
    usage = await repo.limit_usage(session, party, "DEPOSIT")
    assert (usage.used_day_cents, usage.used_30_days_cents) == (1234, 1234)
    await sql("UPDATE transactions SET status = 'FAILED' WHERE id = :id", {"id": counted})
    usage = await repo.limit_usage(session, party, "DEPOSIT")
    assert (usage.used_day_cents, usage.used_30_days_cents) == (0, 0)
    [(rows,)] = (
        await sql(
            "SELECT count(*) FROM party_limit_usage WHERE party_ref = :p AND amount_cents <> 0",
            {"p": party},
        )
    ).all()
    assert rows == 0
