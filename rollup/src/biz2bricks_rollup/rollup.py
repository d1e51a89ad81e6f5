"""Daily summaries: one set-based statement per UTC day, run under an advisory lock.

A day's rows are rebuilt from ``usage_events`` with INSERT .. SELECT .. GROUP BY .. ON CONFLICT
DO UPDATE (rows whose figures did not change are not rewritten), and summary rows whose group
has no events any more are deleted, in the same statement and transaction. The statement reads
the day's events once, grouped by provider, model, user and operation, and writes from that
both usage_daily_summaries (provider, model) and usage_daily_breakdowns (per user, per
operation, per provider, model, user and operation; biz2bricks_core.late_events). It is
biz2bricks_core.summaries', which a void or an amendment also runs for the organizations and
days it touched; each day's transaction takes that module's day lock first.
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

from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import Biz2BricksError
from biz2bricks_core.summaries import day_lock_sql, rollup_day_sql

log = logging.getLogger(__name__)

LOCK_KEY = 0x62327262_726F6C6C  # "b2rb" "roll": the rollup's advisory lock
# Events committed by a transaction that began before a run may carry a received_at just
# before the run's start; a day stays due for events received up to this long before its run.
LATE_MARGIN = timedelta(minutes=5)

# The statement itself is biz2bricks_core.summaries' (a correction runs it for one organization).
ROLLUP_DAY = text(rollup_day_sql(":day", ":start", ":end"))
DAY_LOCK = text(day_lock_sql("CAST(:day AS date)"))

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
        await conn.execute(DAY_LOCK, {"day": day})  # a correction's refresh of the day waits
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
