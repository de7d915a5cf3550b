"""Scenario 4: Postgres is restarted under steady load, with an immediate shutdown (what a crash
or a failover looks like to its clients). While it is down every answer is a 503 problem+json
with code `database_unavailable`, never a 500 or a stack trace; the service serves again within
seconds of its return; nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.fault.conftest import Launch, record_figures
from tests.fault.harness import (
    PartnerApp,
    PostgresCluster,
    SteadyLoad,
    answer_kinds,
    bad_answers,
    env_float,
    new_deposit,
    percentile,
    recovery_figures,
    wait_until_healed,
)

pytestmark = pytest.mark.fault

DOWN_SECONDS = env_float("FAULT_PG_DOWN_SECONDS", 5.0)
SERVE_AGAIN_WITHIN = env_float("FAULT_PG_SERVE_AGAIN_WITHIN", 10.0)
CLIENTS = 6
PARTIES = 6


async def read_steadily(app: PartnerApp, party: str, stop: asyncio.Event) -> None:
    """A reader beside the writers: the transaction list, five times a second."""
    while not stop.is_set():
        await app.send("GET", f"/v1/parties/{party}/transactions?limit=5")
        await asyncio.sleep(0.2)


async def test_postgres_restart_answers_503_and_loses_nothing(
    launch: Launch, pg_cluster: PostgresCluster
) -> None:
    stack = await launch()
    parties = await stack.link_parties(PARTIES, "f4")
    load = SteadyLoad(stack.app, parties, CLIENTS)
    load.start()
    stop_reading = asyncio.Event()
    reader = asyncio.create_task(read_steadily(stack.app, parties[0], stop_reading))
    await asyncio.sleep(3)

    try:
        await asyncio.to_thread(pg_cluster.stop, "immediate")
        stopped_at = time.monotonic()
        await asyncio.sleep(DOWN_SECONDS)
    finally:
        # Whatever happens, the cluster is up again for the next scenario.
        restart_at = time.monotonic()
        await asyncio.to_thread(pg_cluster.start)
    up_at = time.monotonic()

    # Serving again: a deposit of our own, sent the moment Postgres is back and retried (with
    # its key) every 0.2 s until it is accepted.
    probe = new_deposit(parties[0], "12.34")
    await stack.app.deposit(probe, max_wait=0.2, give_up_after=60)
    serving_again = time.monotonic() - up_at if probe.status == 202 else None
    async with httpx.AsyncClient(base_url=stack.service.base_url) as http:
        ready = (await http.get("/readyz")).status_code

    await asyncio.sleep(2)
    stop_reading.set()
    await reader
    await load.stop()
    deposits = [*load.deposits, probe]
    report, _ = await wait_until_healed(stack.dsn, stack.control, deposits, parties, 120)
    healed_after = time.monotonic() - up_at

    answers = stack.app.answers
    # Sent once Postgres was gone and answered before `pg_ctl start` was called: it was down for
    # the whole exchange. While it starts up (crash recovery), answers may be either.
    down = [a for a in answers if a.sent_at >= stopped_at and a.sent_at + a.seconds < restart_at]
    starting = [a for a in answers if restart_at <= a.sent_at < up_at]
    healing = await recovery_figures(stack.dsn, parties)
    record_figures(
        "4. Postgres restarted under load (immediate shutdown)",
        {
            **report.figures(),
            **healing,
            "HTTP requests of the partner app": len(answers),
            "Postgres down, then starting (s)": [
                round(restart_at - stopped_at, 1),
                round(up_at - restart_at, 1),
            ],
            "answers while down": answer_kinds(down),
            "answers while it started": answer_kinds(starting),
            "p99 answer while down (s)": round(percentile([a.seconds for a in down], 0.99), 3),
            "serving again after Postgres returned (s)": None
            if serving_again is None
            else round(serving_again, 1),
            "healed after Postgres returned (s)": round(healed_after, 1),
        },
    )
    problems = report.problems()
    if not down:
        problems.append("no request was answered while Postgres was down")
    if [d for d in deposits if d.status != 202]:
        problems.append("a deposit was not accepted in the end")
    no_answer = [a for a in down + starting if a.status is None]
    if no_answer:
        problems.append(f"{len(no_answer)} requests got no answer (connection closed)")
    wrong = [
        a
        for a in down
        if a.status is not None
        and not (a.status == 503 and a.code == "database_unavailable" and a.retry_after)
    ]
    if wrong:
        problems.append(f"answers while down other than 503 database_unavailable: {wrong[:3]}")
    bad = bad_answers(answers)
    if bad:
        problems.append(f"500s, stack traces or bodies that are not problem+json: {bad[:3]}")
    if ready != 200:
        problems.append(f"/readyz answers {ready} after Postgres returned")
    if serving_again is None or serving_again > SERVE_AGAIN_WITHIN:
        problems.append(f"serving again after {serving_again} s, not {SERVE_AGAIN_WITHIN}")
    assert problems == []
