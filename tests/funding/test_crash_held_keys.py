"""A consumer's claim names the process holding it (issue 12, availability after a crash): once
that process stops renewing its heartbeat the claim is stale whatever its lease says, and the
next retry takes it over and resumes with the same Bakkt idempotency key; a live holder keeps
its claim for the whole lease. The process-level proof (SIGKILL, restart, retry) is
tests/fault/test_crash_held_key.py; here the clock is moved in the database."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.idempotency import service as idempotency
from app.idempotency.service import ClaimTaken, IdempotentRequest, KeyClaim, terms_for
from app.processes.service import ProcessHeartbeat
from bakkt_sandbox.testing import RunningSandbox
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, link_account, with_key


@pytest.fixture
def headers(auth: TokenFactory, party: str) -> dict[str, str]:
    return auth(party)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polls the sandbox
            await asyncio.sleep(0.01)


async def _process(run: Execute, *, silent_for: float) -> uuid.UUID:
    """A registered process whose last heartbeat was `silent_for` seconds ago (database clock)."""
    process_id = uuid.uuid4()
    await run(
        "INSERT INTO service_processes (id, kind, hostname, pid, heartbeat_at) VALUES "
        "(:id, 'serve', 'test', 1, clock_timestamp() - make_interval(secs => :s))",
        {"id": process_id, "s": silent_for},
    )
    return process_id


async def _die_mid_call(
    live_api: httpx.AsyncClient, sandbox: RunningSandbox, party: str, same: dict[str, str]
) -> None:
    """A deposit whose Bakkt call was recorded at Bakkt and never answered, then abandoned by
    its request (as when its process is killed)."""
    await sandbox.set_fault(
        "transferFiatCurrency", "timeout", phase="after", count=1, hold_seconds=30
    )
    url = f"/v1/parties/{party}/deposits"
    dying = asyncio.create_task(live_api.post(url, json={"amount": "10.00"}, headers=same))

    async def bakkt_has_it() -> bool:
        return len(await sandbox.transfers(party)) == 1

    await eventually(bakkt_has_it)
    dying.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await dying


async def test_a_claim_whose_process_stopped_renewing_is_taken_over_at_once_with_the_same_key(
    live_api: httpx.AsyncClient,
    live_sql: Execute,
    sandbox: RunningSandbox,
    api_settings: Settings,
    party: str,
    headers: dict[str, str],
) -> None:
    await link_account(live_api, live_sql, party, headers)
    same = with_key(headers)
    url = f"/v1/parties/{party}/deposits"
    await _die_mid_call(live_api, sandbox, party, same)
    # The claim is the dead process's, silent just past the bound; its lease is far from over.
    dead = await _process(live_sql, silent_for=api_settings.process_stale_after + 0.5)
    await live_sql(
        "UPDATE idempotency_keys SET holder_id = :h WHERE request_path = :u", {"h": dead, "u": url}
    )
    [(lease_left,)] = await live_sql(
        "SELECT locked_until - clock_timestamp() FROM idempotency_keys WHERE request_path = :u",
        {"u": url},
    )
    assert lease_left.total_seconds() > 3 * api_settings.process_stale_after

    resumed = await live_api.post(url, json={"amount": "10.00"}, headers=same)

    assert resumed.status_code == 202
    assert resumed.json()["status"] == "PENDING"
    [(txn_id, bakkt_key)] = await live_sql(
        "SELECT id, bakkt_idempotency_key FROM transactions WHERE party_ref = :p", {"p": party}
    )
    assert resumed.json()["id"] == str(txn_id)
    [transfer] = await sandbox.transfers(party)
    assert transfer["idempotencyKey"] == bakkt_key
    assert transfer["requestCount"] == 2


async def test_a_claim_whose_process_still_renews_keeps_its_lease(
    live_api: httpx.AsyncClient,
    live_sql: Execute,
    sandbox: RunningSandbox,
    api_settings: Settings,
    party: str,
    headers: dict[str, str],
) -> None:
    await link_account(live_api, live_sql, party, headers)
    same = with_key(headers)
    url = f"/v1/parties/{party}/deposits"
    await _die_mid_call(live_api, sandbox, party, same)
    alive = await _process(live_sql, silent_for=api_settings.process_stale_after - 2)
    await live_sql(
        "UPDATE idempotency_keys SET holder_id = :h WHERE request_path = :u", {"h": alive, "u": url}
    )

    retried = await live_api.post(url, json={"amount": "10.00"}, headers=same)

    assert retried.status_code == 409
    assert retried.json()["code"] == "idempotency_request_in_progress"
    [transfer] = await sandbox.transfers(party)
    assert transfer["requestCount"] == 1


async def test_a_claim_naming_an_unregistered_process_waits_for_its_lease(
    live_api: httpx.AsyncClient,
    live_sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    # A process whose first heartbeat has not reached the database is not judged dead.
    await link_account(live_api, live_sql, party, headers)
    same = with_key(headers)
    url = f"/v1/parties/{party}/deposits"
    await _die_mid_call(live_api, sandbox, party, same)
    await live_sql(
        "UPDATE idempotency_keys SET holder_id = :h WHERE request_path = :u",
        {"h": uuid.uuid4(), "u": url},
    )

    retried = await live_api.post(url, json={"amount": "10.00"}, headers=same)

    assert retried.status_code == 409


async def test_claims_name_the_serving_process_in_the_insert_itself(
    live_app: FastAPI,
    live_api: httpx.AsyncClient,
    live_sql: Execute,
    party: str,
    headers: dict[str, str],
) -> None:
    await link_account(live_api, live_sql, party, headers)
    answer = await live_api.post(
        f"/v1/parties/{party}/deposits", json={"amount": "10.00"}, headers=with_key(headers)
    )
    assert answer.status_code == 202
    holders = await live_sql(
        "SELECT DISTINCT holder_id FROM idempotency_keys WHERE party_ref = :p", {"p": party}
    )
    assert holders == [(live_app.state.heartbeat.id,)]


async def test_an_intent_is_written_once_per_claim_and_release_keeps_it(
    session: AsyncSession, sql: Execute, api_settings: Settings, party: str
) -> None:
    # Two holders of one claim (a live one believed dead, and its taker) both try to write the
    # intent: only the first does; the other's release must not drop the key that now has one.
    req = IdempotentRequest(party, f"k-{uuid.uuid4()}", "POST", "/x", "f" * 64)
    first = await idempotency.claim(session, req, terms_for(api_settings, None))
    assert isinstance(first, KeyClaim)
    await idempotency.record_intent(session, first, None)
    await session.commit()

    with pytest.raises(ClaimTaken):
        await idempotency.record_intent(session, first, None)
    await idempotency.release(session, first)

    [(point,)] = (
        await sql(
            "SELECT recovery_point FROM idempotency_keys WHERE id = :id", {"id": first.key_id}
        )
    ).all()
    assert point == "intent_written"


async def test_a_process_registers_renews_and_is_stale_at_once_after_a_clean_stop(
    engine: AsyncEngine, live_sql: Execute
) -> None:
    heartbeat = ProcessHeartbeat(engine.url, kind="serve", interval=3600)
    await heartbeat.start()
    try:
        [(first,)] = await live_sql(
            "SELECT heartbeat_at FROM service_processes WHERE id = :id", {"id": heartbeat.id}
        )
        assert await heartbeat.beat()
        [(renewed,)] = await live_sql(
            "SELECT heartbeat_at FROM service_processes WHERE id = :id", {"id": heartbeat.id}
        )
        assert renewed > first
    finally:
        await heartbeat.stop()
    [(stopped,)] = await live_sql(
        "SELECT heartbeat_at FROM service_processes WHERE id = :id", {"id": heartbeat.id}
    )
    assert stopped < datetime(2000, 1, 1, tzinfo=UTC)
