"""Scenario 2: the service is killed with SIGKILL five times under steady load and started
again. Clients retry with the same key (some give up, as closed apps do; careful ones back off
exponentially within a 40 s budget, and every one of theirs must get a definite answer); once
it is back, every request is decided and Bakkt holds exactly one transfer per accepted
transaction, within two sweep cycles of the rows falling due."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fault.conftest import Launch, record_figures
from tests.fault.harness import (
    SteadyLoad,
    answer_kinds,
    bad_answers,
    env_float,
    recovery_figures,
    wait_until_healed,
)

pytestmark = pytest.mark.fault

KILLS = 5
KILL_EVERY = env_float("FAULT_KILL_INTERVAL", 4.0)
CLIENTS = 8
# Careful apps (issue 12): the same key, exponential backoff, 40 s budget, never abandon.
CAREFUL_CLIENTS = 4
PARTIES = 8


async def test_service_killed_five_times_heals_without_loss_or_double(launch: Launch) -> None:
    stack = await launch()
    parties = await stack.link_parties(PARTIES, "f2")

    load = SteadyLoad(
        stack.app, parties, CAREFUL_CLIENTS + CLIENTS, abandon_every=3, careful=CAREFUL_CLIENTS
    )
    load.start()
    ready_after: list[float] = []
    for _ in range(KILLS):
        await asyncio.sleep(KILL_EVERY)
        ready_after.append(await stack.restart_service())
    last_restart = time.monotonic()
    await asyncio.sleep(KILL_EVERY)
    await load.stop()
    deposits = load.deposits

    # Rows a killed request or worker left behind wait out the longest bound that may still
    # cover them (the consumer's key until its dead holder's heartbeat is stale, the SUBMITTING
    # grace, a worker's claim); then recovery has two cycles of its slowest job, and the restart
    # itself a few seconds.
    cfg = stack.settings()
    cycle = max(cfg.recovery_settle_interval, cfg.recovery_sweep_interval) * 1.2  # with jitter
    key_held = cfg.process_stale_after
    bound = max(key_held, cfg.recovery_submitting_grace, cfg.recovery_claim_lease) + 2 * cycle + 10
    careful = [d for d in deposits if d.careful]
    careful_undecided = [d for d in careful if d.status is None]
    careful_waits = [d.answered_after for d in careful if d.answered_after is not None]
    report, _ = await wait_until_healed(stack.dsn, stack.control, deposits, parties, 120)
    healed_after_restart = time.monotonic() - last_restart
    healing = await recovery_figures(stack.dsn, parties)
    record_figures(
        "2. service SIGKILLed 5 times under load",
        {
            **report.figures(),
            **healing,
            "answers to the partner app": answer_kinds(stack.app.answers),
            "restart to ready (s)": [round(s, 1) for s in ready_after],
            "time to heal after the last restart (s)": round(healed_after_restart, 1),
            "allowed (longest lease + two cycles + 10 s)": round(bound, 1),
            "careful deposits (same key, backoff, 40 s budget)": len(careful),
            "careful deposits without a definite answer": len(careful_undecided),
            "careful: slowest definite answer (s)": round(max(careful_waits, default=0.0), 1),
        },
    )
    problems = report.problems()
    if careful_undecided:
        problems.append(f"{len(careful_undecided)} careful deposits got no definite answer")
    if healed_after_restart > bound:
        problems.append(f"healed {healed_after_restart:.0f} s after the last restart")
    if [d for d in deposits if not d.abandoned and d.status != 202]:
        problems.append("a deposit was not accepted")
    if bad_answers(stack.app.answers):
        problems.append(f"bad answers: {bad_answers(stack.app.answers)[:3]}")
    assert problems == []
