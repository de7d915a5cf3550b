"""When to try an event again after a failed attempt."""

from __future__ import annotations

import random
from collections.abc import Sequence

# A receiver's Retry-After is believed within these bounds: a 0 would have us hammer it, a week
# would look like a lost event.
MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 86_400.0
JITTER = 0.1

_rng = random.SystemRandom()


def retry_delay(
    failures: int,
    schedule: Sequence[float],
    *,
    retry_after: float | None = None,
    rng: random.Random = _rng,
) -> float:
    """Seconds until the next attempt after `failures` failed ones in a row (1 = the first
    failed). The schedule's n-th wait follows the n-th failure, its last wait repeats; each is
    jittered by +-10% so that parties failing together do not retry together. A receiver's
    Retry-After replaces the schedule's wait: it knows when it can take more, we only guess."""
    if retry_after is not None:
        return min(max(retry_after, MIN_RETRY_AFTER), MAX_RETRY_AFTER)
    wait = schedule[min(max(failures, 1), len(schedule)) - 1]
    return wait * rng.uniform(1 - JITTER, 1 + JITTER)
