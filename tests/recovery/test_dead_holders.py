"""The finisher and dead holders (issue 12): a consumer request whose process died after writing
its intent is finished as soon as the process is silent past PROCESS_STALE_AFTER, though its
key's lease has long to run; a live process's key is left to it."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.metrics import Metrics
from app.idempotency.finisher import finish_abandoned_requests
from tests.recovery.conftest import Isolate
from tests.recovery.helpers import Execute, add_transfer

STALE_AFTER = timedelta(seconds=6)


async def _process(run: Execute, *, silent_for: timedelta) -> uuid.UUID:
    process_id = uuid.uuid4()
    await run(
        "INSERT INTO service_processes (id, kind, hostname, pid, heartbeat_at) VALUES "
        "(:id, 'serve', 'test', 1, clock_timestamp() - CAST(:s AS interval))",
        {"id": process_id, "s": silent_for},
    )
    return process_id


async def _key(run: Execute, party: str, txn_id: str, holder: uuid.UUID) -> int:
    rows = await run(
        "INSERT INTO idempotency_keys (party_ref, key, request_method, request_path, fingerprint, "
        "recovery_point, locked_until, holder_id, transaction_id, expires_at) VALUES (:p, :k, "
        "'POST', '/v1/parties/x/deposits', 'f', 'intent_written', "
        "clock_timestamp() + interval '2 minutes', :h, CAST(:t AS uuid), "
        "clock_timestamp() + interval '10 days') RETURNING id",
        {"p": party, "k": f"key-{txn_id}", "t": txn_id, "h": holder},
    )
    return int(rows[0][0])


async def test_a_dead_processs_request_is_finished_before_its_lease_runs_out(
    sql: Execute,
    factory: async_sessionmaker[AsyncSession],
    party: str,
    isolate: Isolate,
) -> None:
    dead = await _process(sql, silent_for=STALE_AFTER + timedelta(seconds=1))
    alive = await _process(sql, silent_for=STALE_AFTER - timedelta(seconds=3))
    orphaned = await add_transfer(sql, party, status="PENDING")
    held = await add_transfer(sql, party, status="PENDING")
    # Other tests' keys are hidden first; ours are written after, so keep their holders.
    await isolate(party)
    dead_key = await _key(sql, party, orphaned.id, dead)
    live_key = await _key(sql, party, held.id, alive)
    metrics = Metrics()

    done = await finish_abandoned_requests(factory, stale_after=STALE_AFTER, metrics=metrics)

    assert done == 1
    rows = {
        r[0]: (r[1], r[2])
        for r in await sql(
            "SELECT id, recovery_point, response_status FROM idempotency_keys WHERE id = ANY(:ids)",
            {"ids": [dead_key, live_key]},
        )
    }
    assert rows == {dead_key: ("finished", 202), live_key: ("intent_written", None)}
