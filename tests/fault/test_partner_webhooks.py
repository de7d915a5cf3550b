"""Scenario 7: the partner's webhook receiver is down for the whole load (nothing listens on its
port: every attempt is a refused connection), then comes back. Every event the service wrote
for the scenario's parties reaches it, each signed, in order per party, none lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict

import asyncpg
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.fault.conftest import Launch, record_figures
from tests.fault.harness import SteadyLoad, bad_answers, env_float, free_port, wait_until_healed

pytestmark = pytest.mark.fault

LOAD_SECONDS = env_float("FAULT_WEBHOOK_LOAD_SECONDS", 20.0)
ARRIVE_WITHIN = env_float("FAULT_WEBHOOK_ARRIVE_WITHIN", 60.0)
SECRET = "whsec_" + "ZmF1bHQtc3VpdGUtcGFydG5lci13ZWJob29rLWtleSEh"
CLIENTS = 6
PARTIES = 6


async def _events_of(dsn: str, parties: list[str]) -> list[tuple[str, str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, party_ref, seq FROM events WHERE party_ref = ANY($1::text[]) "
            "AND seq IS NOT NULL ORDER BY seq",
            parties,
        )
        return [(r["id"], r["party_ref"], r["seq"]) for r in rows]
    finally:
        await conn.close()


async def _settled(dsn: str, parties: list[str], within: float) -> int:
    """Wait until the parties' events stop growing (deposits settled); returns the count."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        count = len(await _events_of(dsn, parties))
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= 3.0:
            return count
        await asyncio.sleep(0.5)
    return last


async def test_a_receiver_down_for_the_whole_load_gets_every_event_when_it_comes_back(
    launch: Launch,
) -> None:
    port = free_port()
    stack = await launch(
        service_env={
            "PARTNER_WEBHOOK_URLS": f"http://127.0.0.1:{port}/hooks",
            "PARTNER_WEBHOOK_SECRETS": SECRET,
            "PARTNER_WEBHOOK_RETRY_SCHEDULE": "0.5,1,2",
            "PARTNER_WEBHOOK_INTERVAL": "0.5",
            "PARTNER_WEBHOOK_TIMEOUT": "2",
            "PARTNER_WEBHOOK_LEASE": "20",
        }
    )
    parties = await stack.link_parties(PARTIES, "f7")
    load = SteadyLoad(stack.app, parties, CLIENTS)
    load.start()
    await asyncio.sleep(LOAD_SECONDS)
    await load.stop()
    report, _ = await wait_until_healed(stack.dsn, stack.control, load.deposits, parties, 120)
    written = await _settled(stack.dsn, parties, 60)

    conn = await asyncpg.connect(stack.dsn)
    try:
        refused = await conn.fetchval(
            "SELECT count(*) FROM partner_webhook_attempts WHERE outcome = 'connection'"
        )
        delivered_before = await conn.fetchval(
            "SELECT count(*) FROM partner_webhook_deliveries WHERE state = 'DELIVERED'"
        )
    finally:
        await conn.close()

    # The receiver comes back: verify as a real one would, and keep every delivery's id.
    verifier = Webhook(SECRET)
    arrived: list[str] = []
    forged = 0
    expected = await _events_of(stack.dsn, parties)
    wanted = {e[0] for e in expected}
    everything = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        nonlocal forged
        body = await request.read()
        try:
            verifier.verify(body, dict(request.headers))
        except Exception:
            forged += 1
            return web.Response(status=400)
        arrived.append(request.headers["webhook-id"])
        if wanted <= set(arrived):
            everything.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    back_at = time.monotonic()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everything.wait(), ARRIVE_WITHIN)
        all_arrived_after = time.monotonic() - back_at
    finally:
        await runner.cleanup()

    missing = wanted - set(arrived)
    # Order per party: each party's ids, first arrivals only, are in seq order.
    seq_of = {e[0]: (e[1], e[2]) for e in expected}
    first: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for event_id in arrived:
        if event_id in seq_of and event_id not in seen:
            seen.add(event_id)
            party, seq = seq_of[event_id]
            first[party].append(seq)
    out_of_order = [p for p, seqs in first.items() if seqs != sorted(seqs)]
    figures = {
        "deposits": len(load.deposits),
        "events written for the parties": len(expected),
        "events settled before the receiver came back": written,
        "refused attempts while down": refused,
        "delivered while down": delivered_before,
        "deliveries received": len(arrived),
        "duplicates": len(arrived) - len(set(arrived)),
        "missing": len(missing),
        "parties out of order": len(out_of_order),
        "forged": forged,
        "seconds until every event arrived": round(all_arrived_after, 1),
    }
    record_figures("7 partner receiver down, then back", figures)

    assert not report.problems(), report.problems()
    assert bad_answers(stack.app.answers) == []
    assert len(expected) > len(load.deposits), "the load wrote fewer events than deposits"
    assert refused > 0, "the receiver was never tried while it was down"
    assert delivered_before == 0
    assert missing == set(), f"{len(missing)} events never arrived: {sorted(missing)[:5]}"
    assert out_of_order == []
    assert forged == 0
