"""Scenario 6 (issue 12, availability after a crash): the service is SIGKILLed while its Bakkt
call hangs (Bakkt has recorded the transfer and not answered), started again, and the client
retries with the same key. Its claim names the dead process, whose heartbeat stops: the retry
must get a definite answer within 10 s of the service being ready again (not after the key's
lease, over two minutes with these timeouts), and Bakkt must hold exactly one transfer."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from app.idempotency.service import lease_for
from tests.fault.conftest import Launch, record_figures
from tests.fault.harness import answer_kinds, bad_answers, new_deposit, wait_until_healed

pytestmark = pytest.mark.fault

ANSWER_WITHIN = 10.0
# Long enough that the kill certainly lands while the call hangs, and that the key's lease
# (every attempt timing out) is far longer than the bound this scenario holds the service to.
READ_TIMEOUT = "30"


async def test_a_retry_after_a_kill_mid_call_is_answered_within_10_s_with_one_transfer(
    launch: Launch,
) -> None:
    stack = await launch(service_env={"BAKKT_READ_TIMEOUT": READ_TIMEOUT})
    [party] = await stack.link_parties(1, "f6")
    lease = lease_for(stack.settings()).total_seconds()
    await stack.control.set_fault(
        "transferFiatCurrency", "timeout", phase="after", count=1, hold_seconds=120
    )
    deposit = new_deposit(party, "25.00")
    first = asyncio.create_task(
        stack.app.send(
            "POST",
            f"/v1/parties/{party}/deposits",
            json={"amount": deposit.amount},
            key=deposit.key,
        )
    )
    # Bakkt has the transfer and holds its answer: the service is inside its call.
    async with asyncio.timeout(15):
        while not await stack.control.transfers(party):  # noqa: ASYNC110 - polls the sandbox
            await asyncio.sleep(0.05)
    stack.service.kill()
    killed_at = time.monotonic()
    with contextlib.suppress(Exception):
        await first
    await stack.control.clear_faults()

    ready_after = await stack.start_service()
    ready_at = time.monotonic()
    await stack.app.careful_deposit(deposit)
    answered_after_ready = time.monotonic() - ready_at

    report, _ = await wait_until_healed(stack.dsn, stack.control, [deposit], [party], 30)
    [transfer] = await stack.control.transfers(party)
    record_figures(
        "6. SIGKILL while the Bakkt call hangs, restart, retry with the same key",
        {
            **report.figures(),
            "answers to the partner app": answer_kinds(stack.app.answers),
            "restart to ready (s)": round(ready_after, 1),
            "kill to definite answer (s)": round(time.monotonic() - killed_at, 1),
            "ready to definite answer (s)": round(answered_after_ready, 1),
            "allowed after ready (s)": ANSWER_WITHIN,
            "the key's lease (s)": round(lease, 1),
            "requests Bakkt got for the transfer": transfer["requestCount"],
        },
    )
    problems = report.problems()
    if deposit.status != 202:
        problems.append(f"the retry was answered {deposit.status}, not 202")
    if answered_after_ready > ANSWER_WITHIN:
        problems.append(f"answered {answered_after_ready:.1f} s after the service was ready")
    if bad_answers(stack.app.answers):
        problems.append(f"bad answers: {bad_answers(stack.app.answers)[:3]}")
    assert problems == []
    assert report.transfers_at_bakkt == 1
    assert lease > 6 * ANSWER_WITHIN  # the lease alone could not have answered in time
