"""Billing periods: calendar months or years in UTC, which period an event counts in, and how
the period counters read and roll. Each rule in Python and in SQL.

The rules:

- ``period_bounds``: the period ``[start, end)`` containing a moment.
- ``in_period``: an event counts in a period when its ``occurred_at`` lies in ``[start, end)``;
  a late event of an earlier period is stored but counts there, never in the current one.
- ``period_reading``: a counter whose period has ended reads 0 (no job has to reset it: the
  first event of the next period rolls it, and until then every reader sees 0).
- ``period_start_after``: a batch whose newest event lies past ``period_end`` moves the
  counters to the period of that event.
- ``counter_after_roll``: a counter keeps its value while the period stays and restarts from 0
  when it rolls; the batch's counted usage is added either way.

The ``*_sql`` twins take SQL expressions written in code (column names, aliases), never input.
They are what the consumer's writer, reconcile, the hold functions and UsageService compose;
tests/core/test_billing_rules_sql.py runs both twins on the same cases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "PeriodUnit",
    "counter_after_roll",
    "counter_after_roll_sql",
    "in_period",
    "in_period_sql",
    "period_bounds",
    "period_end_sql",
    "period_reading",
    "period_reading_sql",
    "period_start_after",
    "period_start_after_sql",
    "period_start_sql",
]

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
    """SQL twin of ``period_bounds(at, unit)[0]`` for a timestamptz and a period_unit column."""
    return f"date_trunc({unit}, {at}, 'UTC')"


def period_end_sql(start: str, unit: str) -> str:
    """SQL twin of ``period_bounds(...)[1]``: the end of the period that begins at ``start``."""
    return f"({start} + CAST('1 ' || {unit} AS interval))"


def in_period(at: datetime, start: datetime, end: datetime) -> bool:
    """Does an event that occurred at ``at`` count in the period ``[start, end)``?"""
    return start <= at < end


def in_period_sql(at: str, start: str, end: str) -> str:
    """SQL twin of ``in_period``."""
    return f"({at} >= {start} AND {at} < {end})"


def period_reading(value: int, period_end: datetime, now: datetime) -> int:
    """What a period counter reads at ``now``: 0 once its period has ended."""
    return 0 if now >= period_end else value


def period_reading_sql(value: str, period_end: str, now: str = "now()") -> str:
    """SQL twin of ``period_reading``."""
    return f"CASE WHEN {now} >= {period_end} THEN 0 ELSE {value} END"


def period_start_after(
    start: datetime, end: datetime, newest_event: datetime, unit: PeriodUnit | str
) -> datetime:
    """The start of the counters' period after a batch whose newest event is ``newest_event``."""
    return period_bounds(newest_event, unit)[0] if newest_event >= end else start


def period_start_after_sql(start: str, end: str, newest_event: str, unit: str) -> str:
    """SQL twin of ``period_start_after``."""
    return (
        f"CASE WHEN {newest_event} >= {end}"
        f" THEN {period_start_sql(newest_event, unit)} ELSE {start} END"
    )


def counter_after_roll(value: int, same_period: bool, added: int) -> int:
    """A period counter after a batch added ``added``: restarted from 0 if the period rolled."""
    return (value if same_period else 0) + added


def counter_after_roll_sql(value: str, same_period: str, added: str) -> str:
    """SQL twin of ``counter_after_roll``; ``same_period`` is a boolean expression."""
    return f"CASE WHEN {same_period} THEN {value} ELSE 0 END + {added}"
