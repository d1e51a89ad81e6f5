"""``query_usage``: an organization's usage by window and group, exact, from summaries where
they are trustworthy and from events elsewhere.

Exact means equal to a GROUP BY over the organization's events in ``[start, end)`` as they
are at the query's snapshot, today and late arrivals included, voided events left out. A UTC
day is read from the rollup's summaries only when all of these hold (else its events are read):

1. the day lies wholly inside ``[start, end)`` and inside one window (biz2bricks_core.
   usage_windows.summary_days: in a zone whose midnight is not UTC's, day windows never are);
2. ``usage_rollup_days`` has the day (and, for a breakdown by user or operation, says the run
   wrote its breakdowns);
3. no correction (void, amend) of the organization's events of that day was made after the
   day's watermark, and no event of the organization in that day was received after it: those
   received more than LATE_AFTER after they occurred are found through the late-arrival
   index, the others can only have occurred in the day's last LATE_AFTER before the watermark,
   which is read directly (biz2bricks_core.late_events).

Everything runs in one REPEATABLE READ transaction, so the checks and the figures see the
same snapshot. Summary rows and event aggregates are summed in one statement; windows are
assigned by ``width_bucket`` against the boundaries computed in Python, so the two sources
share one definition of every window.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from biz2bricks_core.counting import event_tokens, unpriced_count_sql
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.late_events import FULL, breakdown_for, late_arrival_sql, recent_slice
from biz2bricks_core.summaries import FIGURE_COLUMNS
from biz2bricks_core.usage_windows import (
    QuerySpec,
    UsageRow,
    event_intervals,
    summary_days,
    window_bounds,
)

__all__ = ["query_usage", "run_query", "trusted_days"]

# Dimension -> its column and the SQL type of its filter values (never from input).
_COLUMNS: Final = {
    "provider": ("provider", "text[]"),
    "model": ("model", "text[]"),
    "user_id": ("user_id", "uuid[]"),
    "operation": ("operation", "text[]"),
    # The price context (biz2bricks_core.pricing.price_variant): "" for standard calls.
    "price_variant": ("price_variant", "text[]"),
}
_SUMS: Final = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "unpriced",
)

# The days the rollup has run for, first and last: a long range's candidates are cut to them.
_ROLLED_EXTENT = text("SELECT min(day), max(day) FROM usage_rollup_days")
# Ranges longer than this many days look the extent up before listing their candidate days.
_LONG_RANGE_DAYS: Final = 400
_ROLLED = text(
    "SELECT day, watermark, breakdowns FROM usage_rollup_days"
    " WHERE day = ANY(CAST(:days AS date[]))"
)
# Late arrivals of the organization in the candidate days, through ix_usage_events_late (its
# predicate is inlined so that the planner can match the partial index).
_LATE = text(
    "SELECT CAST(timezone('UTC', occurred_at) AS date) AS day, max(received_at) AS received"
    " FROM usage_events WHERE organization_id = :org"
    " AND occurred_at >= :lo AND occurred_at < :hi"
    f" AND {late_arrival_sql('received_at', 'occurred_at')} GROUP BY 1"
)
# Corrections (voids, amends) of the organization's events in the candidate days: a day with
# one made after its watermark is read from its events until the rollup runs it again.
_CORRECTED = text(
    "SELECT CAST(timezone('UTC', occurred_at) AS date) AS day, max(created_at) AS corrected"
    " FROM usage_corrections WHERE organization_id = :org"
    " AND occurred_at >= :lo AND occurred_at < :hi GROUP BY 1"
)
# Days with an event received after their watermark within their recent slice.
_RECENT = text(
    "SELECT r.day FROM unnest(CAST(:days AS date[]), CAST(:los AS timestamptz[]),"
    " CAST(:his AS timestamptz[]), CAST(:marks AS timestamptz[])) AS r(day, lo, hi, mark)"
    " WHERE EXISTS (SELECT 1 FROM usage_events e WHERE e.organization_id = :org"
    " AND e.occurred_at >= r.lo AND e.occurred_at < r.hi AND e.received_at > r.mark)"
)


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


async def trusted_days(
    conn: AsyncConnection, org: uuid.UUID, days: Sequence[date], *, breakdowns: bool
) -> list[date]:
    """The candidate days whose summaries hold every event of the organization."""
    if not days:
        return []
    rolled = {
        row.day: row.watermark
        for row in await conn.execute(_ROLLED, {"days": list(days)})
        if row.breakdowns or not breakdowns
    }
    if not rolled:
        return []
    lo, hi = _day_bounds(min(rolled))[0], _day_bounds(max(rolled))[1]
    late = await conn.execute(_LATE, {"org": org, "lo": lo, "hi": hi})
    stale = {row.day for row in late if row.day in rolled and row.received > rolled[row.day]}
    corrected = await conn.execute(_CORRECTED, {"org": org, "lo": lo, "hi": hi})
    stale |= {r.day for r in corrected if r.day in rolled and r.corrected > rolled[r.day]}
    slices = [
        (day, piece, mark)
        for day, mark in rolled.items()
        if day not in stale and (piece := recent_slice(*_day_bounds(day), mark)) is not None
    ]
    if slices:
        found = await conn.execute(
            _RECENT,
            {
                "org": org,
                "days": [d for d, _, _ in slices],
                "los": [p[0] for _, p, _ in slices],
                "his": [p[1] for _, p, _ in slices],
                "marks": [m for _, _, m in slices],
            },
        )
        stale |= set(found.scalars())
    return sorted(day for day in rolled if day not in stale)


# The summarised days: a range (the common case: contiguous days) checked first, cheaply.
_DAYS: Final = "day BETWEEN :first_day AND :last_day AND day = ANY(CAST(:days AS date[]))"


def _breakdown_source(kept: int) -> str:
    """The breakdown rows keeping ``kept`` dimensions, plus the part of the events without
    the kept user or operation (the rollup writes no breakdown row for it;
    biz2bricks_core.late_events): the summary rows less the breakdown rows, per provider and
    model for FULL, per day otherwise."""
    figures = ", ".join(FIGURE_COLUMNS)
    summed = ", ".join(f"sum({f}) AS {f}" for f in FIGURE_COLUMNS)
    residual = ", ".join(f"s.{f} - coalesce(b.{f}, 0) AS {f}" for f in FIGURE_COLUMNS)
    rows = (
        f"FROM usage_daily_breakdowns WHERE organization_id = :org AND {_DAYS}"
        f" AND dimensions = {kept}"
    )
    summaries = f"FROM usage_daily_summaries WHERE organization_id = :org AND {_DAYS}"
    if kept == FULL:
        keys, on = "day, provider, model", "b.provider = s.provider AND b.model = s.model AND "
        # Summary rows per price variant: summed per provider and model first.
        per = f"(SELECT organization_id, {keys}, {summed} {summaries} GROUP BY 1, 2, 3, 4)"
        parts = "s.provider, s.model"
    else:
        keys, on = "day", ""
        per = f"(SELECT organization_id, day, {summed} {summaries} GROUP BY 1, 2)"
        parts = "CAST(NULL AS varchar), CAST(NULL AS varchar)"
    return (
        f"SELECT organization_id, day, provider, model, user_id, operation, {figures} {rows}"
        f" UNION ALL SELECT s.organization_id, s.day, {parts}, CAST(NULL AS uuid),"
        f" CAST(NULL AS varchar), {residual} FROM {per} AS s"
        f" LEFT JOIN (SELECT {keys}, {summed} {rows} GROUP BY {keys}) AS b"
        f" ON {on}b.day = s.day WHERE s.request_count > coalesce(b.request_count, 0)"
    )


def _filter_sql(spec: QuerySpec, params: dict[str, Any]) -> str:
    clauses = []
    for dimension, values in spec.filters.items():
        column, array = _COLUMNS[dimension]
        kept = [v for v in values if v is not None]
        params[f"f_{dimension}"] = [uuid.UUID(v) for v in kept] if array == "uuid[]" else kept
        match = f"{column} = ANY(CAST(:f_{dimension} AS {array}))"
        if None in values:
            match = f"({match} OR {column} IS NULL)"
        clauses.append(match)
    return "".join(f" AND {c}" for c in clauses)


def _statement(
    spec: QuerySpec, days: list[date], intervals: list[tuple[datetime, datetime]]
) -> tuple[str, dict[str, Any]]:
    """The one statement summing summary rows and event aggregates by window and group."""
    params: dict[str, Any] = {}
    filters = _filter_sql(spec, params)
    dims = [_COLUMNS[d][0] for d in spec.group_by]
    picked = "".join(f", {c}" for c in dims)
    by = "".join(f", {n + 2}" for n in range(len(dims)))
    windowed = spec.window is not None
    parts = []
    if days:
        kept = breakdown_for(spec.dimensions)
        source = "usage_daily_summaries" if kept is None else f"({_breakdown_source(kept)})"
        where = f"organization_id = :org AND {_DAYS}" if kept is None else "true"
        bucket = (
            "width_bucket(timezone('UTC', CAST(day AS timestamp)), CAST(:bounds AS timestamptz[]))"
            if windowed
            else "1"
        )
        parts.append(
            f"SELECT {bucket} AS bucket{picked}, request_count AS requests, input_tokens,"
            " output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,"
            f" unpriced_count AS unpriced FROM {source} AS src WHERE {where}{filters}"
        )
        params.update(days=days, first_day=min(days), last_day=max(days))
    if intervals:
        bucket = "width_bucket(occurred_at, CAST(:bounds AS timestamptz[]))" if windowed else "1"
        parts.append(
            f"SELECT {bucket} AS bucket{picked}, count(*) AS requests,"
            " sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,"
            " sum(cache_read_tokens) AS cache_read_tokens,"
            " sum(cache_write_tokens) AS cache_write_tokens,"
            f" coalesce(sum(cost_usd), 0) AS cost_usd, {unpriced_count_sql('cost_usd')} AS unpriced"
            " FROM unnest(CAST(:los AS timestamptz[]), CAST(:his AS timestamptz[])) AS r(lo, hi)"
            " JOIN usage_events e ON e.organization_id = :org"
            " AND e.occurred_at >= r.lo AND e.occurred_at < r.hi AND e.voided_at IS NULL"
            f" WHERE true{filters} GROUP BY 1{by}"
        )
        params["los"] = [lo for lo, _ in intervals]
        params["his"] = [hi for _, hi in intervals]
    sums = ", ".join(f"sum({s}) AS {s}" for s in _SUMS)
    outer = "".join(f", CAST({c} AS text) AS {c}" if c == "user_id" else f", {c}" for c in dims)
    order = "".join(f", {n + 2} NULLS LAST" for n in range(len(dims)))
    sql = (
        f"SELECT bucket{outer}, {sums} FROM ({' UNION ALL '.join(parts)}) AS u"
        f" GROUP BY bucket{picked} ORDER BY bucket{order}"
    )
    return sql, params


async def run_query(conn: AsyncConnection, org: uuid.UUID, spec: QuerySpec) -> list[UsageRow]:
    """Answer ``spec`` on ``conn`` (in the caller's transaction: use REPEATABLE READ)."""
    bounds = window_bounds(spec)
    within = None
    if (spec.end - spec.start).days > _LONG_RANGE_DAYS:
        first, last = (await conn.execute(_ROLLED_EXTENT)).one()
        within = (first, last) if first is not None else (date.max, date.min)
    candidates = summary_days(spec, bounds, within)
    kept = breakdown_for(spec.dimensions)
    days = await trusted_days(conn, org, candidates, breakdowns=kept is not None)
    if kept is not None and "price_variant" in spec.dimensions:
        days = []  # breakdowns do not keep the price variant: the events answer alone
    intervals = event_intervals(spec, days)
    sql, params = _statement(spec, days, intervals)
    params.update(org=org, bounds=bounds)
    if spec.window is None:
        params.pop("bounds")
    result = await conn.execute(text(sql), params)
    return [_row(spec, bounds, row._mapping) for row in result]


def _row(spec: QuerySpec, bounds: Sequence[datetime], m: Any) -> UsageRow:
    start = end = None
    if spec.window is not None:
        start, end = bounds[m["bucket"] - 1], bounds[m["bucket"]]
    unpriced = int(m["unpriced"])
    input_tokens, output_tokens = int(m["input_tokens"]), int(m["output_tokens"])
    return UsageRow(
        window_start=start,
        window_end=end,
        groups={d: m[_COLUMNS[d][0]] for d in spec.group_by},
        requests=int(m["requests"]),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=int(m["cache_read_tokens"]),
        cache_write_tokens=int(m["cache_write_tokens"]),
        total_tokens=event_tokens(input_tokens, output_tokens),
        cost_usd=None if unpriced else m["cost_usd"],
        unpriced_events=unpriced,
    )


async def query_usage(db: DatabaseManager, org: uuid.UUID, spec: QuerySpec) -> list[UsageRow]:
    """Answer ``spec`` for ``org`` in one read-only REPEATABLE READ transaction."""
    async with db.unavailable_as_error(), db.engine.connect() as conn:
        snapshot = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with snapshot.begin():
            await snapshot.execute(text("SET TRANSACTION READ ONLY"))
            return await run_query(snapshot, org, spec)
