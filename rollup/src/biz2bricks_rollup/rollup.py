"""Daily summaries: one set-based statement per UTC day, run under an advisory lock.

A day's rows are rebuilt from ``usage_events`` with INSERT .. SELECT .. GROUP BY .. ON CONFLICT
DO UPDATE (rows whose figures did not change are not rewritten), and summary rows whose group
has no events any more are deleted, in the same statement and transaction. The statement reads
the day's events once, grouped by provider, model, user and operation, and writes from that
both usage_daily_summaries (provider, model) and usage_daily_breakdowns (per user, per
operation, per provider, model, user and operation; biz2bricks_core.late_events).
``usage_rollup_days`` remembers each day's last run; events received after it make the day due
again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from biz2bricks_core.counting import unpriced_count_sql
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import Biz2BricksError
from biz2bricks_core.late_events import FULL, OPERATION, USER

log = logging.getLogger(__name__)

LOCK_KEY = 0x62327262_726F6C6C  # "b2rb" "roll": the rollup's advisory lock
# Events committed by a transaction that began before a run may carry a received_at just
# before the run's start; a day stays due for events received up to this long before its run.
LATE_MARGIN = timedelta(minutes=5)

_FIGURE_COLUMNS = (
    "request_count",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "unpriced_count",
)
_SUMS = ", ".join(_FIGURE_COLUMNS)
# Sums of a finer grain's rows (sum of bigint is numeric: back to bigint).
_RESUM = (
    "CAST(sum(request_count) AS bigint) AS request_count,"
    " CAST(sum(input_tokens) AS bigint) AS input_tokens,"
    " CAST(sum(output_tokens) AS bigint) AS output_tokens,"
    " CAST(sum(cache_read_tokens) AS bigint) AS cache_read_tokens,"
    " CAST(sum(cache_write_tokens) AS bigint) AS cache_write_tokens,"
    " sum(cost_usd) AS cost_usd, CAST(sum(unpriced_count) AS bigint) AS unpriced_count"
)


def _refresh_figures(alias: str) -> str:
    """The DO UPDATE of a summary upsert: take the new figures, but rewrite a row only when one
    of them changed (an unchanged day writes nothing)."""
    new = ", ".join(f"excluded.{c}" for c in _FIGURE_COLUMNS)
    old = ", ".join(f"{alias}.{c}" for c in _FIGURE_COLUMNS)
    assign = ", ".join(f"{c} = excluded.{c}" for c in _FIGURE_COLUMNS)
    return f"DO UPDATE SET {assign}, updated_at = now() WHERE ({old}) IS DISTINCT FROM ({new})"


# A key column that may be NULL, compared with = so that the anti-join can hash.
_NULL_UUID = "CAST('00000000-0000-0000-0000-000000000000' AS uuid)"

ROLLUP_DAY = text(
    f"""
WITH fine AS (
    -- One scan of the day's events at the finest grain; every summary row derives from it.
    SELECT organization_id, provider, model, price_variant, user_id, operation,
        count(*) AS request_count,
        sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
        sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
        -- The cost of the priced events; unpriced_count says how many it leaves out.
        coalesce(sum(cost_usd), 0) AS cost_usd, {unpriced_count_sql("cost_usd")} AS unpriced_count
    FROM usage_events
    WHERE occurred_at >= :start AND occurred_at < :end AND voided_at IS NULL
    GROUP BY organization_id, provider, model, price_variant, user_id, operation
),
agg AS (
    SELECT organization_id, provider, model, price_variant, {_RESUM}
    FROM fine GROUP BY organization_id, provider, model, price_variant
),
written AS (
    INSERT INTO usage_daily_summaries AS s (organization_id, day, provider, model,
        price_variant, request_count, input_tokens, output_tokens, cache_read_tokens,
        cache_write_tokens, cost_usd, unpriced_count, updated_at)
    SELECT organization_id, :day, provider, model, price_variant, request_count, input_tokens,
        output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, unpriced_count, now()
    FROM agg
    ON CONFLICT (organization_id, day, provider, model, price_variant) {_refresh_figures("s")}
    RETURNING 1
),
removed AS (
    DELETE FROM usage_daily_summaries s
    WHERE s.day = :day AND NOT EXISTS (
        SELECT 1 FROM agg a WHERE a.organization_id = s.organization_id
            AND a.provider = s.provider AND a.model = s.model
            AND a.price_variant = s.price_variant)
    RETURNING 1
),
parts AS (
    -- Sparse: no row for events without any of the kept dimensions; the query derives that
    -- part as the summary row less the breakdown rows (biz2bricks_core.late_events).
    SELECT organization_id, {USER} AS dimensions, CAST(NULL AS varchar) AS provider,
        CAST(NULL AS varchar) AS model, user_id, CAST(NULL AS varchar) AS operation, {_RESUM}
    FROM fine WHERE user_id IS NOT NULL GROUP BY organization_id, user_id
    UNION ALL
    SELECT organization_id, {OPERATION}, NULL, NULL, CAST(NULL AS uuid), operation, {_RESUM}
    FROM fine WHERE operation IS NOT NULL GROUP BY organization_id, operation
    UNION ALL
    -- Breakdowns do not keep the price variant: its calls are summed here.
    SELECT organization_id, {FULL}, provider, model, user_id, operation, {_RESUM} FROM fine
    WHERE user_id IS NOT NULL OR operation IS NOT NULL
    GROUP BY organization_id, provider, model, user_id, operation
),
parts_written AS (
    INSERT INTO usage_daily_breakdowns AS b (organization_id, day, dimensions, provider, model,
        user_id, operation, {_SUMS}, updated_at)
    SELECT organization_id, :day, dimensions, provider, model, user_id, operation, {_SUMS}, now()
    FROM parts
    ON CONFLICT (organization_id, day, dimensions, provider, model, user_id, operation)
    {_refresh_figures("b")}
    RETURNING 1
),
parts_removed AS (
    DELETE FROM usage_daily_breakdowns b
    WHERE b.day = :day AND NOT EXISTS (
        SELECT 1 FROM parts p WHERE p.organization_id = b.organization_id
            AND p.dimensions = b.dimensions
            -- provider and model are NULL exactly in the rows of USER and OPERATION
            AND coalesce(p.provider, '') = coalesce(b.provider, '')
            AND coalesce(p.model, '') = coalesce(b.model, '')
            AND coalesce(p.user_id, {_NULL_UUID}) = coalesce(b.user_id, {_NULL_UUID})
            AND (p.user_id IS NULL) = (b.user_id IS NULL)
            AND coalesce(p.operation, '') = coalesce(b.operation, '')
            AND (p.operation IS NULL) = (b.operation IS NULL))
    RETURNING 1
)
SELECT (SELECT count(*) FROM agg) AS groups, (SELECT count(*) FROM written) AS written,
    (SELECT count(*) FROM removed) AS removed,
    (SELECT count(*) FROM parts_written) AS breakdowns_written,
    (SELECT count(*) FROM parts_removed) AS breakdowns_removed
"""
)

MARK_DAY = text(
    "INSERT INTO usage_rollup_days (day, rolled_up_at, watermark, rows_written, breakdowns)"
    " VALUES (:day, now(), now() - make_interval(secs => :margin_s), :rows, true)"
    " ON CONFLICT (day) DO UPDATE SET rolled_up_at = excluded.rolled_up_at,"
    " watermark = excluded.watermark, rows_written = excluded.rows_written,"
    " breakdowns = true"
)

DUE_DAYS = text(
    """
SELECT d.day FROM (
    SELECT day, max(last_received) AS last_received FROM (
        SELECT CAST(timezone('UTC', occurred_at) AS date) AS day, received_at AS last_received
        FROM usage_events
        WHERE received_at > coalesce((SELECT max(watermark) FROM usage_rollup_days), '-infinity')
        UNION ALL
        -- A correction (void, amend) makes its event's day due again.
        SELECT CAST(timezone('UTC', occurred_at) AS date), created_at
        FROM usage_corrections
        WHERE created_at > coalesce((SELECT max(watermark) FROM usage_rollup_days), '-infinity')
    ) changed
    GROUP BY 1
) d
LEFT JOIN usage_rollup_days r USING (day)
WHERE d.day < CAST(timezone('UTC', now()) AS date)
    AND (r.day IS NULL OR d.last_received > r.watermark)
ORDER BY d.day
"""
)


class RollupBusyError(Biz2BricksError):
    """Another rollup holds the advisory lock (run with --wait to queue behind it)."""


@dataclass(frozen=True)
class DayResult:
    """What the rollup of one day did."""

    day: date
    groups: int
    written: int
    removed: int
    seconds: float
    # The same for usage_daily_breakdowns (written and removed counts summaries only).
    breakdowns_written: int = 0
    breakdowns_removed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        values = asdict(self)
        values["day"] = self.day.isoformat()
        values["seconds"] = round(self.seconds, 3)
        return values


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """``[start, end)`` of a UTC day."""
    start = datetime.combine(day, dtime.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def days_between(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last`` inclusive."""
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


@asynccontextmanager
async def rollup_lock(db: DatabaseManager, *, wait: bool) -> AsyncIterator[AsyncConnection]:
    """Hold the rollup's advisory lock for the whole run, on a connection of its own."""
    async with db.engine.connect() as conn:
        if wait:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
        else:
            got = (
                await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY})
            ).scalar_one()
            if not got:
                raise RollupBusyError(
                    "another rollup is running (advisory lock held); rerun later or use --wait"
                )
        await conn.commit()
        try:
            yield conn
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            await conn.commit()


async def rollup_day(conn: AsyncConnection, day: date) -> DayResult:
    """Rebuild one day's summaries and record the run, in one transaction."""
    started = time.perf_counter()
    start, end = day_bounds(day)
    async with conn.begin():
        row = (await conn.execute(ROLLUP_DAY, {"start": start, "end": end, "day": day})).one()
        await conn.execute(
            MARK_DAY, {"day": day, "margin_s": LATE_MARGIN.total_seconds(), "rows": row.groups}
        )
    return DayResult(
        day,
        row.groups,
        row.written,
        row.removed,
        time.perf_counter() - started,
        row.breakdowns_written,
        row.breakdowns_removed,
    )


async def due_days(conn: AsyncConnection) -> list[date]:
    """Yesterday, plus every earlier day that received events since its last rollup."""
    async with conn.begin():
        found = list((await conn.execute(DUE_DAYS)).scalars())
        today = (
            await conn.execute(text("SELECT CAST(timezone('UTC', now()) AS date)"))
        ).scalar_one()
    yesterday = today - timedelta(days=1)
    return sorted(set(found) | {yesterday})


async def run_rollup(
    db: DatabaseManager,
    days: Iterable[date] | None = None,
    *,
    wait: bool = False,
    progress: Any = None,
) -> list[DayResult]:
    """Roll up ``days`` (or the due days) under the advisory lock; one transaction per day."""
    results = []
    async with rollup_lock(db, wait=wait) as conn:
        todo = list(days) if days is not None else await due_days(conn)
        for day in todo:
            result = await rollup_day(conn, day)
            results.append(result)
            log.info("rollup.day_done", extra=result.as_dict())
            if progress is not None:
                progress(result, len(results), len(todo))
    return results
