"""Scenario 1: 500 deposits while Bakkt misbehaves (20% 5xx, 10% timeouts, 10% accepted then
the connection dropped, seeded). Once the faults stop, every request is decided and Bakkt holds
exactly one transfer per accepted transaction: none missing, none doubled."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from tests.fault.conftest import Launch, record_figures
from tests.fault.harness import (
    amount_for,
    answer_kinds,
    bad_answers,
    check_ledger,
    env_float,
    new_deposit,
    recovery_figures,
    wait_until_healed,
)

pytestmark = pytest.mark.fault

DEPOSITS = int(env_float("FAULT_DEPOSITS", 500))
PARTIES = 10
CONCURRENCY = 12
HEAL_WITHIN = env_float("FAULT_HEAL_SECONDS", 120)
SEED = 20240607

# Share of all requests each fault hits. The sandbox checks its faults in order and the first
# that fires wins, so each rate is conditional on the ones before it not firing.
FAULT_SHARES: list[tuple[str, str, float]] = [
    ("error", "before", 0.10),  # 5xx, nothing done
    ("error", "after", 0.10),  # 5xx after the transfer was recorded
    ("timeout", "before", 0.10),  # held open past our read timeout, then closed
    ("accept_then_drop", "after", 0.10),  # recorded, then the connection closed unanswered
]
# Transfers, and the look-ups recovery makes to settle them, are hurt alike.
OPERATIONS = ("transferFiatCurrency", "getTransaction")


async def test_deposits_under_bakkt_faults_end_decided_once_each(launch: Launch) -> None:
    stack = await launch()
    parties = await stack.link_parties(PARTIES, "f1")

    remaining = 1.0
    for operation in OPERATIONS:
        remaining = 1.0
        for n, (mode, phase, share) in enumerate(FAULT_SHARES):
            await stack.control.set_fault(
                operation,
                mode,  # type: ignore[arg-type]
                rate=min(1.0, share / remaining),
                seed=SEED + n,
                status=503 if n == 0 else 500,
                phase=phase,  # type: ignore[arg-type]
                hold_seconds=2.0,
            )
            remaining -= share

    deposits = [new_deposit(parties[i % PARTIES], amount_for(i)) for i in range(DEPOSITS)]
    gate = asyncio.Semaphore(CONCURRENCY)

    async def send(i: int) -> None:
        async with gate:
            await stack.app.deposit(deposits[i])

    load_started = time.monotonic()
    await asyncio.gather(*(send(i) for i in range(DEPOSITS)))
    load_seconds = time.monotonic() - load_started

    hits = Counter[str]()
    for fault in await stack.control.faults():
        hits[f"{fault['mode']}/{fault['phase']}"] += fault["hits"]
    await stack.control.clear_faults()
    at_end = await check_ledger(stack.dsn, stack.control, deposits, parties)
    report, healed_in = await wait_until_healed(
        stack.dsn, stack.control, deposits, parties, HEAL_WITHIN
    )

    answered_unknown = sum(
        1 for d in deposits if isinstance(d.body, dict) and d.body.get("status") == "UNKNOWN"
    )
    healing = await recovery_figures(stack.dsn, parties)
    record_figures(
        "1. Bakkt faults (20% 5xx, 10% timeout, 10% accept-then-drop)",
        {
            **report.figures(),
            **healing,
            "answers to the partner app": answer_kinds(stack.app.answers),
            "answered UNKNOWN (settled later)": answered_unknown,
            "undecided when the load ended": len(at_end.undecided),
            "faults injected": dict(sorted(hits.items())),
            "load seconds": round(load_seconds, 1),
            "time to heal (s)": round(healed_in, 1),
        },
    )
    problems = report.problems()
    if [d for d in deposits if d.status != 202]:
        problems.append("a deposit was not accepted")
    if bad_answers(stack.app.answers):
        problems.append(f"bad answers: {bad_answers(stack.app.answers)[:3]}")
    assert problems == []
