"""The late-arrival rule and its SQL twin on the same cases; windows and the summary plan."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text

from biz2bricks_core import DatabaseManager
from biz2bricks_core.errors import InvalidArgumentError
from biz2bricks_core.late_events import (
    FULL,
    LATE_AFTER,
    OPERATION,
    USER,
    breakdown_for,
    is_late_arrival,
    late_arrival_sql,
    recent_slice,
)
from biz2bricks_core.usage_windows import event_intervals, query_spec, summary_days, window_bounds

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
DELAYS = [timedelta(0), LATE_AFTER - timedelta(microseconds=1), LATE_AFTER]
DELAYS += [LATE_AFTER + timedelta(microseconds=1), timedelta(days=3), -timedelta(minutes=4)]


async def test_the_rule_and_its_sql_twin_agree(db: DatabaseManager) -> None:
    async with db.engine.connect() as conn:
        for delay in DELAYS:
            sql = f"SELECT {late_arrival_sql('CAST(:r AS timestamptz)', 'CAST(:o AS timestamptz)')}"
            in_sql = (await conn.execute(text(sql), {"r": T0 + delay, "o": T0})).scalar_one()
            assert in_sql == is_late_arrival(T0 + delay, T0), delay


def test_the_recent_slice_is_the_last_late_after_before_the_watermark() -> None:
    start, end = T0.replace(hour=0), T0.replace(hour=0) + timedelta(days=1)
    assert recent_slice(start, end, end + LATE_AFTER) is None
    assert recent_slice(start, end, end) == (end - LATE_AFTER, end)
    assert recent_slice(start, end, start + timedelta(minutes=3)) == (start, end)


@pytest.mark.parametrize(
    ("dimensions", "kept"),
    [
        (set(), None),
        ({"model"}, None),
        ({"provider", "model"}, None),
        ({"user_id"}, USER),
        ({"operation"}, OPERATION),
        ({"user_id", "model"}, FULL),
        ({"user_id", "operation"}, FULL),
    ],
)
def test_the_smallest_summary_that_holds_the_dimensions(dimensions: set[str], kept: int) -> None:
    assert breakdown_for(dimensions) == kept


def test_day_windows_across_a_dst_change_last_23_hours() -> None:
    spec = query_spec(
        datetime(2026, 3, 7, tzinfo=UTC),
        datetime(2026, 3, 10, tzinfo=UTC),
        "day",
        (),
        None,
        "America/New_York",
    )
    bounds = window_bounds(spec)
    assert [b - a for a, b in itertools.pairwise(bounds)][2] == timedelta(hours=23)
    assert summary_days(spec, bounds) == []  # New York's midnight is never UTC's


def test_summary_days_are_whole_and_inside_one_window() -> None:
    spec = query_spec(
        datetime(2026, 3, 30, 6, tzinfo=UTC), datetime(2026, 4, 3, tzinfo=UTC), "month"
    )
    days = summary_days(spec, window_bounds(spec))
    assert days == [date(2026, 3, 31), date(2026, 4, 1), date(2026, 4, 2)]
    assert event_intervals(spec, days) == [(spec.start, datetime(2026, 3, 31, tzinfo=UTC))]


def test_summary_days_of_a_long_range_come_quickly_and_within_the_rolled_days() -> None:
    spec = query_spec(datetime(1900, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC), "month")
    bounds = window_bounds(spec)
    days = summary_days(spec, bounds)  # 73k days, 2,400 windows: linear, not their product
    assert len(days) == (date(2100, 1, 1) - date(1900, 1, 1)).days
    within = (date(2026, 3, 30), date(2026, 4, 2))
    assert summary_days(spec, bounds, within) == [date(2026, 3, d) for d in (30, 31)] + [
        date(2026, 4, d) for d in (1, 2)
    ]


@pytest.mark.parametrize(
    ("start", "end", "named"),
    [
        (datetime(1, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC), "start"),
        (datetime(2026, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC), "end"),
        (
            datetime.min.replace(tzinfo=UTC) + timedelta(hours=5),
            datetime(1, 3, 1, tzinfo=UTC),
            "start",
        ),
    ],
)
def test_instants_at_the_ends_of_the_calendar_are_refused(
    start: datetime, end: datetime, named: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=f"^{named}: "):
        query_spec(start, end, None)
