"""Billing period arithmetic: calendar months or years in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

__all__ = ["PeriodUnit", "period_bounds"]

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
