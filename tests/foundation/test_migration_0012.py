"""Migration 0012 fills the running totals of the limits from the transactions already there, and
its trigger keeps them from then on."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import migrate
from tests.foundation.test_migrations import empty_engine

__all__ = ["empty_engine"]

TOTALS = text(
    "SELECT party_ref, direction, hour, amount_cents FROM party_limit_usage "
    "WHERE amount_cents <> 0 ORDER BY 1, 2, 3"
)
EXPECTED = text(
    "SELECT party_ref, type, date_trunc('hour', created_at, 'UTC'), sum(amount_cents) "
    "FROM transactions WHERE origin = 'PARTNER' AND status NOT IN ('FAILED', 'DECLINED', "
    "'CANCELLED') GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)


async def test_the_totals_start_from_the_existing_transfers_and_follow_new_ones(
    empty_engine: AsyncEngine,
) -> None:
    engine = empty_engine
    await migrate.upgrade_async(engine, "0006")
    rows = [
        ("p-a", "DEPOSIT", "PARTNER", "COMPLETED", 1000, timedelta(hours=1)),
        ("p-a", "DEPOSIT", "PARTNER", "PENDING", 250, timedelta(hours=1)),
        ("p-a", "DEPOSIT", "PARTNER", "FAILED", 999, timedelta(hours=1)),
        ("p-a", "WITHDRAWAL", "PARTNER", "RETURNED", 4000, timedelta(days=3)),
        ("p-a", "DEPOSIT", "BAKKT", "COMPLETED", 777, timedelta(hours=2)),
        ("p-b", "DEPOSIT", "PARTNER", "CANCELLED", 5, timedelta(days=40)),
        ("p-b", "DEPOSIT", "PARTNER", "COMPLETED", 6, timedelta(days=40)),
    ]
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO parties (party_ref, status) "
                "VALUES ('p-a', 'ACTIVE'), ('p-b', 'ACTIVE')"
            )
        )
        for party, kind, origin, status, cents, ago in rows:
            await conn.execute(
                text(
                    "INSERT INTO transactions (id, party_ref, type, origin, status, currency, "
                    "amount_cents, bakkt_ref, created_at) VALUES (:id, :p, :t, :o, :s, 'USD', :c, "
                    ":ref, now() - CAST(:ago AS interval))"
                ),
                {"id": (i := str(uuid.uuid4())), "ref": i, "p": party, "t": kind, "o": origin,
                 "s": status, "c": cents, "ago": ago},
            )  # fmt: skip
    await migrate.upgrade_async(engine, "0012")
    async with engine.connect() as conn:
        expected = (await conn.execute(EXPECTED)).all()
        assert (await conn.execute(TOTALS)).all() == expected
        assert [(r[0], r[1], r[3]) for r in expected] == [
            ("p-a", "DEPOSIT", 1250),
            ("p-a", "WITHDRAWAL", 4000),
            ("p-b", "DEPOSIT", 6),
        ]
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO transactions (id, party_ref, type, origin, status, currency, "
                "amount_cents, bakkt_ref) "
                "VALUES (:id, 'p-b', 'DEPOSIT', 'PARTNER', 'SUBMITTING', 'USD', 70, :ref)"
            ),
            {"id": (i := str(uuid.uuid4())), "ref": i},
        )
        await conn.execute(
            text("UPDATE transactions SET status = 'DECLINED' WHERE amount_cents = 6")
        )
    async with engine.connect() as conn:
        assert (await conn.execute(TOTALS)).all() == (await conn.execute(EXPECTED)).all()
    await migrate.downgrade_async(engine, "0006")
    await migrate.upgrade_async(engine, "head")
