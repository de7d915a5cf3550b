"""Scenario 2: the service is killed with SIGKILL five times under steady load and started
again. Clients retry with the same key (some give up, as closed apps do); once it is back,
every request is decided and Bakkt holds exactly one transfer per accepted transaction, within
two sweep cycles of the rows falling due."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.idempotency.service import lease_for
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
PARTIES = 8


async def test_service_killed_five_times_heals_without_loss_or_double(launch: Launch) -> None:
    stack = await launch()
    parties = await stack.link_parties(PARTIES, "f2")

    load = SteadyLoad(stack.app, parties, CLIENTS, abandon_every=3)
    load.start()
    ready_after: list[float] = []
    for _ in range(KILLS):
        await asyncio.sleep(KILL_EVERY)
        ready_after.append(await stack.restart_service())
    last_restart = time.monotonic()
    await asyncio.sleep(KILL_EVERY)
    await load.stop()
    deposits = load.deposits

    # Rows a killed request or worker left behind wait out the longest lease that may still
    # cover them (the consumer's key, the SUBMITTING grace, a worker's claim); then recovery has
    # two cycles of its slowest job, and the restart itself a few seconds.
    cfg = stack.settings()
    cycle = max(cfg.recovery_settle_interval, cfg.recovery_sweep_interval) * 1.2  # with jitter
    key_lease = lease_for(cfg).total_seconds()
    bound = max(key_lease, cfg.recovery_submitting_grace, cfg.recovery_claim_lease) + 2 * cycle + 10
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
        },
    )
    problems = report.problems()
    if healed_after_restart > bound:
        problems.append(f"healed {healed_after_restart:.0f} s after the last restart")
    if [d for d in deposits if not d.abandoned and d.status != 202]:
        problems.append("a deposit was not accepted")
    if bad_answers(stack.app.answers):
        problems.append(f"bad answers: {bad_answers(stack.app.answers)[:3]}")
    assert problems == []
