"""The one exponential backoff: `base`, `2 * base`, `4 * base` ... capped at `cap`."""

from __future__ import annotations


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before try `attempt + 1`, `attempt` counting from 1 (the first retry
    waits `base`). The exponent is bounded so a long-failing row cannot overflow the float."""
    return min(cap, base * 2.0 ** min(max(attempt - 1, 0), 60))
