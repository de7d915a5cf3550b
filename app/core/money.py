"""Dollars and cents: `Decimal` at the edges, integer cents in the database, never `float`."""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

# The amount_cents columns are bigint.
MAX_CENTS = 2**63 - 1


def to_cents(amount: Decimal) -> int:
    """Cents of an amount already known to be whole cents (validated input, settings); a
    sub-cent rest is dropped toward zero, as `int()` would, never rounded up."""
    return int(amount.scaleb(2).to_integral_value(ROUND_DOWN))


def whole_cents(amount: Decimal) -> int | None:
    """Cents of an amount someone else sent (Bakkt), or None when the ledger cannot hold it
    (negative, sub-cent, or past the cents column: `1e20` dollars overflows a bigint)."""
    cents = amount.scaleb(2)
    if cents < 0 or cents > MAX_CENTS or cents != cents.to_integral_value():
        return None
    return int(cents)


def to_dollars(cents: int) -> Decimal:
    """Exact: `to_dollars(1234)` is `Decimal("12.34")`, two places kept."""
    return Decimal(cents).scaleb(-2)


def format_dollars(cents: int) -> str:
    """The API's and the alerts' spelling of an amount: two decimals, never an exponent."""
    return f"{to_dollars(cents):.2f}"
