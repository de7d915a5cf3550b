"""The circuit breaker toward Bakkt: opens after consecutive availability failures, fails fast
while open, lets one probe through after the cooldown, closes when the probe succeeds."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bakkt import BakktClient, BakktRejected, BakktUnavailable
from app.bakkt.breaker import CIRCUIT_OPEN, BreakerState, CircuitBreaker, CircuitOpen
from app.bakkt.setup import bakkt_config
from app.config import Settings
from app.core.metrics import Metrics
from app.recovery.settle import settle_unknown
from app.recovery.sweep import sweep_pending
from bakkt_sandbox.testing import RunningSandbox
from tests.recovery.helpers import counter_by_label


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    # Read through a function so that each check sees the state anew.
    return breaker.state


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(BakktUnavailable), breaker.guard():
            raise BakktUnavailable("503 from Bakkt")


def test_breaker_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=30, clock=clock)
    _fail(breaker, 2)
    with breaker.guard():
        pass  # a success in between starts the count again
    _fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED

    _fail(breaker, 1)

    assert state(breaker) is BreakerState.OPEN
    assert breaker.is_open()
    assert breaker.retry_after() == pytest.approx(30)
    with pytest.raises(CircuitOpen) as refused, breaker.guard():
        pytest.fail("an open breaker must not let the call run")
    assert str(refused.value) == CIRCUIT_OPEN
    assert isinstance(refused.value, BakktUnavailable)


def test_breaker_half_opens_after_cooldown_with_one_probe_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=30, clock=clock)
    _fail(breaker, 1)
    clock.now += 29
    assert breaker.is_open()
    clock.now += 1

    assert state(breaker) is BreakerState.HALF_OPEN
    # Asking does not take the probe: the funding API may check before writing anything.
    assert not breaker.is_open()
    assert not breaker.is_open()
    assert breaker.allow()
    # The probe is out: everyone else is refused until it answers.
    assert breaker.is_open()
    assert not breaker.allow()
    breaker.record_success()

    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow()
    assert breaker.allow()


def test_failed_probe_opens_the_breaker_for_another_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=10, clock=clock)
    _fail(breaker, 2)
    clock.now += 10

    _fail(breaker, 1)

    assert state(breaker) is BreakerState.OPEN
    assert breaker.retry_after() == pytest.approx(10)
    assert breaker.opened_count == 2


def test_answers_from_bakkt_count_as_available_and_cancellation_returns_the_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, clock=clock)
    _fail(breaker, 1)
    clock.now += 5
    with pytest.raises(asyncio.CancelledError), breaker.guard():
        raise asyncio.CancelledError
    # The cancelled probe said nothing about Bakkt: the next caller may probe.
    assert state(breaker) is BreakerState.HALF_OPEN
    with pytest.raises(BakktRejected), breaker.guard():
        raise BakktRejected(400, "INSUFFICIENT_BALANCE", "not enough")
    assert state(breaker) is BreakerState.CLOSED


async def test_client_fails_fast_while_open_then_recovers_by_itself(
    rsettings: Settings,
    sandbox: RunningSandbox,
    factory: async_sessionmaker[AsyncSession],
    party: str,
) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=0.3)
    metrics = Metrics()
    async with BakktClient(bakkt_config(rsettings), breaker=breaker, metrics=metrics) as bakkt:
        await bakkt.balance(party)  # a token, so the failures below are Bakkt's
        outage = await sandbox.set_fault("*", "error", status=503)
        for _ in range(3):
            with pytest.raises(BakktUnavailable):
                await bakkt.get_transaction(party, "any")
        assert state(breaker) is BreakerState.OPEN
        seen = next(f for f in await sandbox.faults() if f["id"] == outage["id"])["seen"]

        started = time.perf_counter()
        with pytest.raises(CircuitOpen):
            await bakkt.get_transaction(party, "any")
        assert time.perf_counter() - started < 0.05
        # Refused here: Bakkt never saw the call.
        assert next(f for f in await sandbox.faults() if f["id"] == outage["id"])["seen"] == seen
        assert metrics.registry.get_sample_value("fiat_onramp_bakkt_circuit_open") == 1
        assert metrics.registry.get_sample_value("fiat_onramp_bakkt_up") == 0
        # The recovery jobs do not hammer Bakkt while it is down: they skip their cycle.
        assert await settle_unknown(factory, bakkt, rsettings, metrics=metrics) == 0
        assert await sweep_pending(factory, bakkt, rsettings, metrics=metrics) == 0
        assert counter_by_label(metrics, "recovery_skipped_circuit_open_total", "worker") == {
            "settle": 1,
            "sweep": 1,
        }

        await sandbox.clear_faults()
        await asyncio.sleep(0.35)
        assert state(breaker) is BreakerState.HALF_OPEN
        assert await bakkt.get_transaction(party, "never-sent") is None

        assert state(breaker) is BreakerState.CLOSED
        assert metrics.registry.get_sample_value("fiat_onramp_bakkt_circuit_open") == 0
        assert metrics.registry.get_sample_value("fiat_onramp_bakkt_up") == 1
        assert metrics.value("bakkt_circuit_opened_total") == 1


async def test_client_without_a_breaker_never_refuses(
    rsettings: Settings, sandbox: RunningSandbox, party: str
) -> None:
    async with BakktClient(bakkt_config(rsettings)) as bakkt:
        await sandbox.set_fault("getTransaction", "error", status=503, count=20)
        for _ in range(6):
            with pytest.raises(BakktUnavailable) as failed:
                await bakkt.get_transaction(party, "any")
            assert str(failed.value) != CIRCUIT_OPEN
