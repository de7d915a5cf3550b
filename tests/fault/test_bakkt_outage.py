"""Scenario 5: Bakkt down entirely for a while (every request to it hangs until our read timeout:
the worst kind of down). Requests get a fast, clear answer once the circuit breaker has seen
Bakkt fail, with no pile-up of waiting requests, and the service recovers by itself when Bakkt
is back: every deposit refused during the outage goes through when its client retries it with
the same key, and nothing is lost or doubled.

The outage lasts FAULT_BAKKT_OUTAGE_SECONDS (default 60, the issue's minute)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fault.conftest import Launch, record_figures
from tests.fault.harness import (
    Answer,
    Deposit,
    amount_for,
    answer_kinds,
    bad_answers,
    env_float,
    new_deposit,
    percentile,
    recovery_figures,
    wait_until_healed,
)

pytestmark = pytest.mark.fault

OUTAGE_SECONDS = env_float("FAULT_BAKKT_OUTAGE_SECONDS", 60.0)
# New deposits per second during the outage, sent whether or not earlier ones were answered
# (an open loop, as many independent consumers make them): slow answers would pile up.
ARRIVALS_PER_SECOND = 10.0
FAST_ANSWER = env_float("FAULT_FAST_ANSWER_SECONDS", 1.0)
BREAKER_COOLDOWN = 10.0
PARTIES = 5


def is_refusal(answer: Answer) -> bool:
    """docs/recovery.md: while the breaker is open a deposit is refused before anything is
    written, with 503 `bakkt_unavailable` and a Retry-After."""
    return answer.status == 503 and answer.code == "bakkt_unavailable"


async def test_bakkt_outage_answers_fast_and_recovers_by_itself(launch: Launch) -> None:
    stack = await launch(service_env={"BAKKT_BREAKER_COOLDOWN": str(BREAKER_COOLDOWN)})
    parties = await stack.link_parties(PARTIES, "f5")
    app = stack.app
    deposits: list[Deposit] = []
    first: dict[str, Answer] = {}

    async def one(deposit: Deposit) -> None:
        answer, body = await app.send(
            "POST",
            f"/v1/parties/{deposit.party}/deposits",
            json={"amount": deposit.amount},
            key=deposit.key,
        )
        deposit.answers.append(answer)
        first[deposit.key] = answer
        if answer.status == 202:
            deposit.status, deposit.body = answer.status, body

    tasks: list[asyncio.Task[None]] = []

    def arrive() -> None:
        deposit = new_deposit(parties[len(deposits) % PARTIES], amount_for(len(deposits)))
        deposits.append(deposit)
        tasks.append(asyncio.create_task(one(deposit)))

    # Before: Bakkt answers.
    for _ in range(10):
        arrive()
    await asyncio.gather(*tasks)

    await stack.control.set_fault("*", "timeout", rate=1.0, hold_seconds=3.0)
    down_at = time.monotonic()
    app.max_in_flight = app.in_flight
    while time.monotonic() - down_at < OUTAGE_SECONDS:
        arrive()
        await asyncio.sleep(1 / ARRIVALS_PER_SECOND)
    max_in_flight_down = app.max_in_flight
    in_flight_at_end = app.in_flight

    await stack.control.clear_faults()
    up_at = time.monotonic()
    recovered_in: float | None = None
    while time.monotonic() - up_at < BREAKER_COOLDOWN + 60:
        arrive()
        await asyncio.sleep(1 / ARRIVALS_PER_SECOND)
        accepted = [
            d
            for d in deposits
            if d.answers and d.answers[0].sent_at >= up_at and d.answers[0].state == "PENDING"
        ]
        if accepted:
            recovered_in = min(a.answers[0].sent_at + a.answers[0].seconds for a in accepted)
            recovered_in -= up_at
            break
    await asyncio.gather(*tasks)

    # The consumers whose deposit was refused try again, with the same key.
    retried = [d for d in deposits if d.status is None]
    retry_started = time.monotonic()
    await asyncio.gather(*(app.deposit(d) for d in retried))
    retried_in = time.monotonic() - retry_started
    report, healed_in = await wait_until_healed(stack.dsn, stack.control, deposits, parties, 120)

    during = [a for a in first.values() if down_at <= a.sent_at < up_at]
    refused = [a for a in during if is_refusal(a)]
    opened_at = min((a.sent_at for a in refused), default=None)
    after_open = [a for a in during if opened_at is not None and a.sent_at >= opened_at]
    healing = await recovery_figures(stack.dsn, parties)
    record_figures(
        f"5. Bakkt down for {OUTAGE_SECONDS:.0f} s (every call hangs)",
        {
            **report.figures(),
            **healing,
            "requests during the outage": len(during),
            "answers during the outage": answer_kinds(during),
            "breaker open after (s)": None if opened_at is None else round(opened_at - down_at, 1),
            "p50 / p99 / max answer once open (s)": [
                round(percentile([a.seconds for a in after_open], q), 3) for q in (0.5, 0.99, 1.0)
            ],
            "p99 answer over the whole outage (s)": round(
                percentile([a.seconds for a in during], 0.99), 3
            ),
            "most requests in flight at once": max_in_flight_down,
            "in flight when Bakkt came back": in_flight_at_end,
            "refused, then retried with the same key": len(retried),
            "all retries answered within (s)": round(retried_in, 1),
            "recovered after Bakkt returned (s)": None
            if recovered_in is None
            else round(recovered_in, 1),
            "time to heal after the retries (s)": round(healed_in, 1),
        },
    )
    problems = report.problems()
    if opened_at is None:
        problems.append("no deposit was refused fast during the outage: no circuit breaker?")
    elif percentile([a.seconds for a in after_open], 0.99) > FAST_ANSWER:
        problems.append(f"p99 answer once the breaker opened is over {FAST_ANSWER} s")
    # Before the breaker has seen enough failures a deposit ends as usual: 202 UNKNOWN.
    other = [a for a in during if not (is_refusal(a) or a.status == 202)]
    if other:
        problems.append(f"answers other than 503 bakkt_unavailable or 202: {other[:3]}")
    if [a for a in refused if not a.retry_after]:
        problems.append("a 503 without Retry-After")
    if recovered_in is None or recovered_in > BREAKER_COOLDOWN + 15:
        problems.append(f"deposits accepted again only {recovered_in} s after Bakkt returned")
    if [d for d in deposits if d.status != 202]:
        problems.append("a deposit was not accepted in the end")
    if bad_answers(app.answers):
        problems.append(f"bad answers: {bad_answers(app.answers)[:3]}")
    assert problems == []
