"""Fitting text someone else sent into our columns."""

from __future__ import annotations


def clip(value: str | None, length: int) -> str | None:
    """`value` cut to `length` characters (a column's size); None and "" pass through."""
    return value[:length] if value else value
