"""Billing period arithmetic: calendar months or years in UTC, in Python and in SQL.

The SQL twins are what the consumer's writer runs when a batch rolls a period forward;
tests/core/test_billing_rules_sql.py checks both agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

__all__ = ["PeriodUnit", "period_bounds", "period_end_sql", "period_start_sql"]

PeriodUnit = Literal["month", "year"]


def period_bounds(at: datetime, unit: PeriodUnit | str = "month") -> tuple[datetime, datetime]:
    """The UTC period ``[start, end)`` that contains ``at`` (an aware datetime)."""
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    at = at.astimezone(UTC)
    if unit == "month":
        start = datetime(at.year, at.month, 1, tzinfo=UTC)
        end = datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
    elif unit == "year":
        start = datetime(at.year, 1, 1, tzinfo=UTC)
        end = datetime(at.year + 1, 1, 1, tzinfo=UTC)
    else:
        raise ValueError(f"unknown period unit {unit!r} (expected 'month' or 'year')")
    return start, end


def period_start_sql(at: str, unit: str) -> str:
    """SQL twin of ``period_bounds(at, unit)[0]`` for a timestamptz and a period_unit column.

    Both arguments are SQL expressions written in code (column names), never input.
    """
    return f"date_trunc({unit}, {at}, 'UTC')"


def period_end_sql(start: str, unit: str) -> str:
    """SQL twin of ``period_bounds(...)[1]``: the end of the period that begins at ``start``."""
    return f"({start} + CAST('1 ' || {unit} AS interval))"
