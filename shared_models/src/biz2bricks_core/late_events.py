"""Late arrivals and what the daily rollup keeps per day: the rules the usage query trusts.

- An event is a *late arrival* when it was received more than ``LATE_AFTER`` after it occurred.
  A partial index of ``usage_events`` holds exactly these (``late_arrival_sql`` is its
  predicate, frozen in migration 0008), so the query finds an organization's late events of a
  month without reading its other events.
- A rolled-up UTC day's summary holds every event of the day received up to the day's
  ``watermark`` (biz2bricks_rollup.rollup). An event received after it is either a late arrival
  (in the index) or occurred within ``LATE_AFTER`` before it was received, hence after
  ``watermark - LATE_AFTER``: ``recent_slice`` is that part of the day, read directly.
- ``usage_daily_breakdowns`` keeps the day's figures, by ``dimensions``, per user (``USER``),
  per operation (``OPERATION``), or per provider, model, user and operation (``FULL``); the
  dashboard's top users and operations read the small first two. It is sparse: events with
  none of the kept user and operation have no row; their part is the usage_daily_summaries
  rows less the breakdown rows (computed by the query), so a day of events without users or
  operations costs the rollup no breakdown rows at all.

The rollup, the query and migration 0008 compose the SQL twins, which take SQL expressions
written in code, never input; tests/query/test_late_events.py runs both twins on the same cases.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Final

__all__ = [
    "FULL",
    "LATE_AFTER",
    "OPERATION",
    "USER",
    "breakdown_for",
    "is_late_arrival",
    "late_arrival_sql",
    "recent_slice",
    "utc_day_of",
]

LATE_AFTER: Final = timedelta(minutes=10)
# The literal of LATE_AFTER as the partial index's predicate spells it: a query uses the index
# only when its WHERE clause contains the same expression, so it is inlined, never bound.
_LATE_AFTER_SQL: Final = "interval '10 minutes'"

# usage_daily_breakdowns.dimensions: which dimensions beyond provider and model a row keeps.
USER: Final = 1
OPERATION: Final = 2
FULL: Final = 7  # provider and model (4), user, operation


def is_late_arrival(received_at: datetime, occurred_at: datetime) -> bool:
    """Was the event received more than LATE_AFTER after it occurred?"""
    return received_at - occurred_at > LATE_AFTER


def late_arrival_sql(received_at: str, occurred_at: str) -> str:
    """SQL twin of ``is_late_arrival``; also the predicate of ix_usage_events_late."""
    return f"({received_at} - {occurred_at} > {_LATE_AFTER_SQL})"


def recent_slice(
    day_start: datetime, day_end: datetime, watermark: datetime
) -> tuple[datetime, datetime] | None:
    """The part of a rolled-up day where an event received after ``watermark`` may have
    occurred without being a late arrival; None when there is no such part."""
    start = max(day_start, watermark - LATE_AFTER)
    return (start, day_end) if start < day_end else None


def breakdown_for(dimensions: set[str]) -> int | None:
    """Which summary answers a query needing ``dimensions`` (grouped or filtered on):
    None for usage_daily_summaries (provider, model and price variant only), else a
    ``dimensions`` value of usage_daily_breakdowns."""
    if dimensions <= {"provider", "model", "price_variant"}:
        return None
    if dimensions == {"user_id"}:
        return USER
    if dimensions == {"operation"}:
        return OPERATION
    return FULL


def utc_day_of(moment: datetime) -> date:
    """The UTC day an instant belongs to (the rollup's day)."""
    return moment.astimezone(UTC).date()
