"""A circuit breaker toward Bakkt: while Bakkt is down, calls fail at once instead of piling up.

Closed: calls go through; `failure_threshold` availability failures in a row (no usable answer:
network failure, timeout, 5xx after the client's own retries, an outcome left unknown) open it.
Open: every call fails fast with `BakktUnavailable("circuit open")` for `cooldown` seconds.
Half-open: after the cooldown one call (the probe) goes through; its success closes the breaker,
its failure opens it for another cooldown. Any answer from Bakkt counts as success here, a
rejection or a 429 included: the breaker is about reachability, not about the request.

One instance per process, shared by every caller of the client (the API and the recovery
workers). State is per process on purpose: each replica learns Bakkt's health by itself, and a
wrong guess costs one cooldown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum

from app.bakkt.errors import (
    BakktAuthFailed,
    BakktOutcomeUnknown,
    BakktRateLimited,
    BakktRejected,
    BakktUnavailable,
)

log = logging.getLogger("app.bakkt")

CIRCUIT_OPEN = "circuit open"


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(BakktUnavailable):
    """Refused without calling Bakkt; `retry_after` is when a probe may go, in seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(CIRCUIT_OPEN)


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown <= 0:
            raise ValueError("cooldown must be positive")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False
        self.opened_count = 0
        # Told True when the breaker opens and False when it closes (the metrics' gauge).
        self.on_change: Callable[[bool], None] | None = None

    # --- what callers ask ------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state as a caller would meet it now (an open breaker past its cooldown is
        half-open). Never changes anything."""
        if self._state is BreakerState.OPEN and self._cooled_down():
            return BreakerState.HALF_OPEN
        return self._state

    def is_open(self) -> bool:
        """True when a call made now would be refused. Consumes nothing, so a caller may ask
        before writing anything (the funding API's fast 503) without taking the probe."""
        state = self.state
        if state is BreakerState.OPEN:
            return True
        return state is BreakerState.HALF_OPEN and self._probe_out

    def retry_after(self) -> float:
        """Seconds until a call may go through again; 0 when it may now."""
        if not self.is_open():
            return 0.0
        if self._state is BreakerState.OPEN and not self._cooled_down():
            return max(self._opened_at + self.cooldown - self._clock(), 0.0)
        # A probe is out: its answer decides, usually within one call's time.
        return 1.0

    def allow(self) -> bool:
        """May a call go now? In half-open this hands out the one probe: a caller that gets
        True must report the outcome (`record_success`, `record_failure` or `release`)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probe_out:
            return False
        self._state = BreakerState.HALF_OPEN
        self._probe_out = True
        log.info("bakkt circuit half-open: one probe goes through")
        return True

    # --- what calls report ----------------------------------------------------------------------

    def record_success(self) -> None:
        if self._state is not BreakerState.CLOSED:
            log.warning("bakkt circuit closed: Bakkt answers again")
            if self.on_change is not None:
                self.on_change(False)
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probe_out = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN:
            self._open("the probe failed")
        elif self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._open(f"{self._failures} availability failures in a row")

    def release(self) -> None:
        """The call ended without telling anything about Bakkt (it was cancelled): a probe it
        held goes back, so the next caller can probe."""
        self._probe_out = False

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Around one call to Bakkt: refuses it while open, and records what it showed."""
        if not self.allow():
            raise CircuitOpen(self.retry_after())
        try:
            yield
        except (BakktUnavailable, BakktOutcomeUnknown):
            self.record_failure()
            raise
        except (BakktRejected, BakktRateLimited, BakktAuthFailed):
            self.record_success()
            raise
        except (asyncio.CancelledError, Exception):
            self.release()
            raise
        else:
            self.record_success()

    # --- inside ---------------------------------------------------------------------------------

    def _cooled_down(self) -> bool:
        return self._clock() - self._opened_at >= self.cooldown

    def _open(self, why: str) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._probe_out = False
        self.opened_count += 1
        log.warning("bakkt circuit open for %.0f s: %s", self.cooldown, why)
        if self.on_change is not None:
            self.on_change(True)
