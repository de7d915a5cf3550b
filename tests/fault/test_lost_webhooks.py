"""Scenario 3: Bakkt's webhooks are lost for good (the sandbox drops half of its deliveries),
so our database falls behind Bakkt. `fiat-onramp reconcile --since 1h` restores every final
state, including the return fees Bakkt created by itself.

The service runs without its workers here, so the reconcile command alone is what heals."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fault.conftest import Launch, record_figures
from tests.fault.harness import (
    BAKKT_TO_OURS,
    amount_for,
    bad_answers,
    check_ledger,
    new_deposit,
    transaction_states,
)

pytestmark = pytest.mark.fault

PARTIES = 6
DEPOSITS = 60
DROP_RATE = 0.5
# The sandbox's magic cents pick the outcome (docs/sandbox.md): every final state occurs.
OUTCOME_CENTS = {5: "01", 6: "02", 7: "03", 8: "04"}  # declined, cancelled, returned, late return


def amount(i: int) -> str:
    cents = OUTCOME_CENTS.get(i % 10)
    return f"{20 + i % 30}.{cents}" if cents else amount_for(i)


def summary_lines(output: str) -> list[str]:
    """The summary the command prints (`drift  3 (missing 1, status 2)`), without log lines."""
    wanted = ("parties", "transactions", "drift", "created", "moved", "flagged")
    return [" ".join(line.split()) for line in output.splitlines() if line.startswith(wanted)]


async def drift(dsn: str, bakkt: list[dict[str, object]], parties: list[str]) -> list[str]:
    """Bakkt's transactions whose status we do not hold (or which we do not have at all)."""
    ours = await transaction_states(dsn, parties)
    out = []
    for tx in bakkt:
        ref, status = str(tx["partnerTransactionRef"]), str(tx["transactionStatus"])
        if ours.get(ref) != BAKKT_TO_OURS[status]:
            out.append(f"{ref} ({tx['fiatTransactionType']}): Bakkt {status}, ours {ours.get(ref)}")
    return out


async def test_reconcile_restores_every_final_state_after_lost_webhooks(launch: Launch) -> None:
    # A frozen business clock: nothing settles until the test moves it, after every deposit.
    stack = await launch(
        service_env={"WORKERS_ENABLED": "false"}, sandbox_env={"SANDBOX_TIME_SCALE": "0"}
    )
    parties = await stack.link_parties(PARTIES, "f3")
    await stack.control.set_webhook_mode(drop_rate=DROP_RATE, seed=3)

    deposits = [new_deposit(parties[i % PARTIES], amount(i)) for i in range(DEPOSITS)]
    gate = asyncio.Semaphore(10)

    async def send(i: int) -> None:
        async with gate:
            await stack.app.deposit(deposits[i])

    await asyncio.gather(*(send(i) for i in range(DEPOSITS)))
    await stack.control.advance_clock(10)
    assert await stack.control.drain_webhooks(within=30) == 0

    bakkt = [t for t in await stack.control.transactions() if t["partnerPartyRef"] in parties]
    dropped = len(await stack.control.webhooks("FIAT_EVENT", state="dropped"))
    before = await drift(stack.dsn, bakkt, parties)

    started = time.monotonic()
    code, output = await stack.cli("reconcile", "--since", "1h")
    reconcile_seconds = time.monotonic() - started
    after = await drift(stack.dsn, bakkt, parties)
    report = await check_ledger(stack.dsn, stack.control, deposits, parties)

    record_figures(
        "3. webhooks lost for good (50% dropped), then `fiat-onramp reconcile --since 1h`",
        {
            **report.figures(),
            "transactions at Bakkt (with fees)": len(bakkt),
            "webhooks dropped": dropped,
            "states behind Bakkt before reconcile": len(before),
            "states behind Bakkt after reconcile": len(after),
            "reconcile seconds": round(reconcile_seconds, 1),
            "reconcile said": summary_lines(output),
        },
    )
    problems = report.problems()
    if code != 0:
        problems.append(f"reconcile exited {code}: {output[-2000:]}")
    if not before:
        problems.append("no webhook was lost: the scenario proves nothing")
    if after:
        problems.append(f"{len(after)} states still behind Bakkt: {after[:5]}")
    if [d for d in deposits if d.status != 202]:
        problems.append("a deposit was not accepted")
    if bad_answers(stack.app.answers):
        problems.append(f"bad answers: {bad_answers(stack.app.answers)[:3]}")
    assert problems == []
