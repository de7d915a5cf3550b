"""Request rates ("60/minute") and the limiter that enforces one per key, in this process.

The limiter is GCRA, the generic cell rate algorithm: a token bucket of `count` tokens refilled
at `count` per `period`, kept as one number per key (the theoretical arrival time of the next
request). A check is a dict lookup and two comparisons, with no lock: the event loop runs one
check at a time. docs/operations.md says why the limits are per process and not shared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)
# Drop the state of keys whose bucket has refilled at most this often: a full bucket is the
# same as no entry, so memory follows the keys active within one period, not all keys seen.
PRUNE_EVERY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    period: float

    def __str__(self) -> str:
        unit = next((u for u, s in _UNITS.items() if s == self.period), None)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.period:g}s"


def parse_rate(value: Any) -> Rate:
    """`N/second`, `N/minute`, `N/hour` or `N/day` (N ≥ 1); ValueError otherwise."""
    if isinstance(value, Rate):
        return value
    match = _RATE.match(str(value))
    if not match or int(match.group(1)) < 1:
        raise ValueError(
            "is not a rate like 60/minute (a count of at least 1, then / and one of second, "
            "minute, hour, day)"
        )
    return Rate(int(match.group(1)), _UNITS[match.group(2).lower()])


class RouteLimiter:
    """Up to `rate.count` requests at once per key, refilled evenly over `rate.period`."""

    __slots__ = ("_next_prune", "_tat", "interval", "rate", "tolerance")

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self.interval = rate.period / rate.count
        # A key may run this far ahead of the even pace: the burst of `count` requests.
        self.tolerance = rate.period - self.interval
        self._tat: dict[object, float] = {}
        self._next_prune = 0.0

    def hit(self, key: object, now: float) -> float:
        """Count one request of `key`: 0.0 when allowed, else the seconds until one would be."""
        tat = self._tat.get(key, now)
        if tat < now:
            tat = now
        wait = tat - self.tolerance - now
        if wait > 0:
            return wait
        self._tat[key] = tat + self.interval
        if now >= self._next_prune:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        self._next_prune = now + PRUNE_EVERY_SECONDS
        stale = [key for key, tat in self._tat.items() if tat <= now]
        for key in stale:
            del self._tat[key]

    def __len__(self) -> int:
        return len(self._tat)
