"""The usage query's arguments, windows and plan: pure functions, no I/O.

- ``query_spec`` checks ``query_usage``'s arguments (an ``InvalidArgumentError`` names the bad
  one) and returns a ``QuerySpec``.
- ``window_bounds``: the window boundaries covering ``[start, end)``, aligned in the query's
  IANA time zone (hours, local midnights, first days of months; DST days last 23 or 25 hours).
- ``summary_days``: the UTC days a summary may answer: wholly inside ``[start, end)`` and
  inside one window. The other instants of the range are read from ``usage_events``
  (``event_intervals``). Which of these days are rolled up and trustworthy is decided by
  biz2bricks_core.usage_query against the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from biz2bricks_core.errors import InvalidArgumentError

__all__ = [
    "DIMENSIONS",
    "MAX_WINDOWS",
    "WINDOWS",
    "QuerySpec",
    "UsageRow",
    "event_intervals",
    "query_spec",
    "summary_days",
    "window_bounds",
]

DIMENSIONS: Final = ("provider", "model", "user_id", "operation", "price_variant")
WINDOWS: Final = ("hour", "day", "month")
# Bounds the answer's size (and the boundaries array sent to PostgreSQL): ~13 months by hour.
MAX_WINDOWS: Final = 10_000
# Instants a query may name: a month inside Python's years 1-9999 on either side, so that every
# window and day around them (in any time zone) is a datetime.
EARLIEST: Final = datetime(1, 2, 1, tzinfo=UTC)
LATEST: Final = datetime(9999, 12, 1, tzinfo=UTC)


@dataclass(frozen=True)
class UsageRow:
    """One window and group of an organization's usage: what its events add up to.

    ``window_start``/``window_end`` are the window's aligned bounds (None when the query has no
    window); the first and last window may extend beyond the query's range, whose events alone
    count. ``cost_usd`` is None when any event of the row is unpriced (``unpriced_events``).
    """

    window_start: datetime | None
    window_end: datetime | None
    groups: dict[str, str | None]
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    total_tokens: int
    cost_usd: Decimal | None
    unpriced_events: int


@dataclass(frozen=True)
class QuerySpec:
    """Checked arguments of one usage query."""

    start: datetime
    end: datetime
    window: str | None
    group_by: tuple[str, ...]
    # dimension -> the values kept (None matches an event without that dimension).
    filters: dict[str, tuple[str | None, ...]] = field(default_factory=dict)
    time_zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))

    @property
    def dimensions(self) -> set[str]:
        """Every dimension the query groups or filters on."""
        return set(self.group_by) | set(self.filters)


def query_spec(
    start: datetime,
    end: datetime,
    window: str | None = None,
    group_by: Iterable[str] = (),
    filters: Mapping[str, Iterable[str | uuid.UUID | None]] | None = None,
    time_zone: str = "UTC",
) -> QuerySpec:
    """Check ``query_usage``'s arguments; raise InvalidArgumentError naming the bad one."""
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidArgumentError(f"{name}: must be a timezone-aware datetime, got {value!r}")
        try:
            inside = EARLIEST <= value.astimezone(UTC) <= LATEST
        except OverflowError:
            inside = False
        if not inside:
            raise InvalidArgumentError(
                f"{name}: {value.isoformat()} is outside the supported range"
                f" ({EARLIEST.date()} to {LATEST.date()})"
            )
    if end <= start:
        raise InvalidArgumentError(f"end: must be after start ({start.isoformat()}), got {end}")
    if window is not None and window not in WINDOWS:
        raise InvalidArgumentError(f"window: must be one of {', '.join(WINDOWS)} or None")
    zone = _zone(time_zone)
    if isinstance(group_by, str):
        raise InvalidArgumentError("group_by: must be a sequence of dimensions, not a string")
    groups = tuple(group_by)
    for dimension in groups:
        if dimension not in DIMENSIONS:
            raise InvalidArgumentError(
                f"group_by: unknown dimension {dimension!r} (one of {', '.join(DIMENSIONS)})"
            )
    if len(set(groups)) != len(groups):
        raise InvalidArgumentError(f"group_by: a dimension is repeated in {list(groups)}")
    spec = QuerySpec(
        start.astimezone(UTC), end.astimezone(UTC), window, groups, _filters(filters), zone
    )
    if window is not None:
        count = _window_count_estimate(spec)
        if count > MAX_WINDOWS:
            raise InvalidArgumentError(
                f"window: {count} {window} windows between start and end; at most {MAX_WINDOWS}"
            )
    return spec


def _zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"time_zone: must be an IANA time zone name, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgumentError(f"time_zone: unknown IANA time zone {name!r}") from None


def _filters(
    filters: Mapping[str, Iterable[str | uuid.UUID | None]] | None,
) -> dict[str, tuple[str | None, ...]]:
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise InvalidArgumentError("filters: must be a mapping of dimension to values")
    checked: dict[str, tuple[str | None, ...]] = {}
    for dimension, values in filters.items():
        if dimension not in DIMENSIONS:
            raise InvalidArgumentError(
                f"filters: unknown dimension {dimension!r} (one of {', '.join(DIMENSIONS)})"
            )
        if isinstance(values, str | uuid.UUID) or not isinstance(values, Iterable):
            raise InvalidArgumentError(f"filters[{dimension}]: must be a list of values")
        kept = tuple(_filter_value(dimension, v) for v in values)
        if not kept:
            raise InvalidArgumentError(f"filters[{dimension}]: needs at least one value")
        checked[dimension] = kept
    return checked


def _filter_value(dimension: str, value: str | uuid.UUID | None) -> str | None:
    if value is None:
        return None
    if dimension == "user_id":
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise InvalidArgumentError(f"filters[user_id]: {value!r} is not a UUID") from None
    if not isinstance(value, str):
        raise InvalidArgumentError(f"filters[{dimension}]: {value!r} is not a string")
    return value


def _window_count_estimate(spec: QuerySpec) -> int:
    span = spec.end - spec.start
    if spec.window == "hour":
        return int(span / timedelta(hours=1)) + 2
    if spec.window == "day":
        return span.days + 2
    return int(span.days / 28) + 2


def _local_start(moment: datetime, window: str, zone: ZoneInfo) -> datetime:
    """The start of the window containing ``moment``, as an aware UTC datetime."""
    if window == "hour":
        # The local wall hour, through the offset in force at the moment (a UTC hour wherever
        # the offset is whole hours).
        offset = moment.astimezone(zone).utcoffset() or timedelta(0)
        wall = moment.astimezone(UTC).replace(tzinfo=None) + offset
        return (wall.replace(minute=0, second=0, microsecond=0) - offset).replace(tzinfo=UTC)
    local = moment.astimezone(zone).date()
    day = local if window == "day" else local.replace(day=1)
    return _instant(datetime.combine(day, time.min), zone)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall time: the first one if it repeats; in a gap (no such
    wall time that day), the moment the clocks jump."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    return min(first, wall.replace(tzinfo=zone, fold=1).astimezone(UTC))


def _next_start(window_start: datetime, window: str, zone: ZoneInfo) -> datetime:
    if window == "hour":
        following = _local_start(window_start + timedelta(hours=1), window, zone)
        return following if following > window_start else window_start + timedelta(hours=1)
    local = window_start.astimezone(zone).date()
    if window == "day":
        day = local + timedelta(days=1)
    else:
        day = (local.replace(day=28) + timedelta(days=4)).replace(day=1)
    return _instant(datetime.combine(day, time.min), zone)


def window_bounds(spec: QuerySpec) -> list[datetime]:
    """Boundaries ``b0 < b1 < .. < bn`` with ``b0 <= start`` and ``bn >= end``: window i is
    ``[b(i-1), b(i))``. Without a window: ``[start, end]``."""
    if spec.window is None:
        return [spec.start, spec.end]
    bounds = [_local_start(spec.start, spec.window, spec.time_zone)]
    while bounds[-1] < spec.end:
        bounds.append(_next_start(bounds[-1], spec.window, spec.time_zone))
    return bounds


def _utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def summary_days(
    spec: QuerySpec, bounds: Sequence[datetime], within: tuple[date, date] | None = None
) -> list[date]:
    """UTC days wholly inside ``[start, end)`` that no window boundary cuts (and, given
    ``within``, between its two days: those a summary can exist for)."""
    first = (
        spec.start.date()
        if spec.start == _utc_midnight(spec.start.date())
        else (spec.start.date() + timedelta(days=1))
    )
    last = spec.end.date() - timedelta(days=1)  # the last day whose end is <= end
    if within is not None:
        first, last = max(first, within[0]), min(last, within[1])
    # A boundary cuts a UTC day when it falls inside it, not at its midnight.
    cut = {
        b.astimezone(UTC).date()
        for b in bounds
        if spec.start < b < spec.end and b != _utc_midnight(b.astimezone(UTC).date())
    }
    days = []
    day = first
    while day <= last:
        if day not in cut:
            days.append(day)
        day += timedelta(days=1)
    return days


def event_intervals(spec: QuerySpec, days: Iterable[date]) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` less the given UTC days, as sorted disjoint intervals."""
    intervals: list[tuple[datetime, datetime]] = []
    cursor = spec.start
    for day in sorted(days):
        lo, hi = _utc_midnight(day), _utc_midnight(day) + timedelta(days=1)
        if lo > cursor:
            intervals.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < spec.end:
        intervals.append((cursor, spec.end))
    return intervals
