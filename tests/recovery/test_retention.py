"""Retention: idempotency keys go after their 10 days, webhook bodies after their period, and
transaction history stays forever."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.core.metrics import Metrics
from app.recovery.retention import apply_retention
from tests.recovery.helpers import Execute, add_transfer, db_now


async def _key(run: Execute, party: str, name: str, expires_in: timedelta) -> None:
    await run(
        "INSERT INTO idempotency_keys (party_ref, key, request_method, request_path, fingerprint, "
        "recovery_point, expires_at) VALUES (:p, :k, 'POST', '/x', 'f', 'finished', "
        "clock_timestamp() + CAST(:e AS interval))",
        {"p": party, "k": name, "e": expires_in},
    )


async def _event(run: Execute, name: str, age: timedelta, status: str) -> None:
    await run(
        "INSERT INTO webhook_events (request_id, body, headers, received_at, status) VALUES "
        "(:r, :b, '{}'::jsonb, clock_timestamp() - CAST(:a AS interval), :s)",
        {"r": name, "b": b'{"raw": true}', "a": age, "s": status},
    )


async def test_retention_deletes_expired_keys_clears_old_bodies_and_keeps_history(
    sql: Execute,
    factory: async_sessionmaker[AsyncSession],
    rsettings: Settings,
    party: str,
) -> None:
    prefix = f"{party}-"
    await _key(sql, party, prefix + "expired", timedelta(seconds=-1))
    await _key(sql, party, prefix + "expired-long-ago", timedelta(days=-30))
    await _key(sql, party, prefix + "alive", timedelta(days=3))
    days = timedelta(days=rsettings.webhook_body_retention_days)
    await _event(sql, prefix + "old-applied", days + timedelta(days=1), "APPLIED")
    await _event(sql, prefix + "old-unmatched", days + timedelta(days=1), "UNMATCHED")
    await _event(sql, prefix + "recent", days - timedelta(days=1), "APPLIED")
    # Still waiting to be applied: its body is all it has.
    await _event(sql, prefix + "old-parked", days + timedelta(days=1), "PARKED")
    old = await add_transfer(sql, party, status="COMPLETED", age=timedelta(days=4000))
    await sql(
        "UPDATE transaction_history SET recorded_at = now() - interval '4000 days' "
        "WHERE transaction_id = :id",
        {"id": old.id},
    )
    history_before = (await sql("SELECT count(*) FROM transaction_history"))[0][0]
    transactions_before = (await sql("SELECT count(*) FROM transactions"))[0][0]
    metrics = Metrics()

    result = await apply_retention(
        factory, rsettings, now=await db_now(sql), batch=1, metrics=metrics
    )

    keys = await sql(
        "SELECT key FROM idempotency_keys WHERE party_ref = :p ORDER BY key", {"p": party}
    )
    assert [k[0] for k in keys] == [prefix + "alive"]
    rows = await sql(
        "SELECT request_id, body FROM webhook_events WHERE request_id LIKE :p",
        {"p": prefix + "%"},
    )
    bodies = {r[0].removeprefix(prefix): r[1] is not None for r in rows}
    assert bodies == {
        "old-applied": False,
        "old-unmatched": False,
        "recent": True,
        "old-parked": True,
    }
    # The events themselves stay (their refs, status and outcome), only the raw body goes.
    assert len(bodies) == 4
    assert result.idempotency_keys_deleted >= 2
    assert result.webhook_bodies_cleared >= 2
    assert (await sql("SELECT count(*) FROM transaction_history"))[0][0] == history_before
    assert (await sql("SELECT count(*) FROM transactions"))[0][0] == transactions_before
    assert metrics.value("recovery_retention_deleted_total", what="idempotency_keys") >= 2
