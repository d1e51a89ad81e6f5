"""Daily summaries: the statement that rebuilds a UTC day's rows, for every organization (the
rollup) or for one (a correction, in its own transaction).

``rollup_day_sql`` is the one statement: it reads the day's non-voided events once, grouped by
provider, model, price variant, user and operation, and upserts usage_daily_summaries and
usage_daily_breakdowns from that (rows whose figures did not change are not rewritten), and
deletes the rows whose group has no events any more, in one statement. The rollup
(biz2bricks_rollup.rollup) runs it per day for every organization; ``refresh_summaries`` runs it
for the (organization, day) pairs a void or an amendment touched, in that correction's
transaction, so the summaries agree with the corrected facts at commit, not only after the next
rollup run. Both take ``day_lock_sql`` first, in day order: a correction and a rollup of the
same day never interleave their upserts (no deadlock, no stale rows written last).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from biz2bricks_core.counting import unpriced_count_sql
from biz2bricks_core.late_events import FULL, OPERATION, USER

__all__ = ["FIGURE_COLUMNS", "day_lock_sql", "refresh_summaries", "rollup_day_sql"]

# The figures every summary and breakdown row carries (the usage query sums the same ones).
FIGURE_COLUMNS: Final = (
    "request_count",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "unpriced_count",
)
_SUMS = ", ".join(FIGURE_COLUMNS)
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
    new = ", ".join(f"excluded.{c}" for c in FIGURE_COLUMNS)
    old = ", ".join(f"{alias}.{c}" for c in FIGURE_COLUMNS)
    assign = ", ".join(f"{c} = excluded.{c}" for c in FIGURE_COLUMNS)
    return f"DO UPDATE SET {assign}, updated_at = now() WHERE ({old}) IS DISTINCT FROM ({new})"


# A key column that may be NULL, compared with = so that the anti-join can hash.
_NULL_UUID = "CAST('00000000-0000-0000-0000-000000000000' AS uuid)"

# The class of the per-day advisory locks (two-int form; "b2rd"), apart from every other key.
DAY_LOCK_CLASS: Final = 0x62327264


def day_lock_sql(day: str) -> str:
    """Take the transaction-scoped lock of the UTC day ``day`` (a SQL date expression)."""
    return f"SELECT pg_advisory_xact_lock({DAY_LOCK_CLASS}, {day} - DATE '2000-01-01')"


def rollup_day_sql(day: str, start: str, end: str, organization: str | None = None) -> str:
    """The statement that rebuilds the summaries of UTC day ``day`` (events in ``[start, end)``),
    of every organization, or of ``organization`` only; all SQL expressions written in code
    (placeholders), never input. It returns one row: groups, written, removed,
    breakdowns_written, breakdowns_removed."""
    only = "" if organization is None else f" AND organization_id = {organization}"
    only_s = "" if organization is None else f" AND s.organization_id = {organization}"
    only_b = "" if organization is None else f" AND b.organization_id = {organization}"
    return f"""
WITH fine AS (
    -- One scan of the day's events at the finest grain; every summary row derives from it.
    SELECT organization_id, provider, model, price_variant, user_id, operation,
        count(*) AS request_count,
        sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
        sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
        -- The cost of the priced events; unpriced_count says how many it leaves out.
        coalesce(sum(cost_usd), 0) AS cost_usd, {unpriced_count_sql("cost_usd")} AS unpriced_count
    FROM usage_events
    WHERE occurred_at >= {start} AND occurred_at < {end} AND voided_at IS NULL{only}
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
    SELECT organization_id, {day}, provider, model, price_variant, request_count, input_tokens,
        output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, unpriced_count, now()
    FROM agg
    ON CONFLICT (organization_id, day, provider, model, price_variant) {_refresh_figures("s")}
    RETURNING 1
),
removed AS (
    DELETE FROM usage_daily_summaries s
    WHERE s.day = {day}{only_s} AND NOT EXISTS (
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
    SELECT organization_id, {day}, dimensions, provider, model, user_id, operation, {_SUMS}, now()
    FROM parts
    ON CONFLICT (organization_id, day, dimensions, provider, model, user_id, operation)
    {_refresh_figures("b")}
    RETURNING 1
),
parts_removed AS (
    DELETE FROM usage_daily_breakdowns b
    WHERE b.day = {day}{only_b} AND NOT EXISTS (
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


_ORG_DAY: Final = rollup_day_sql("CAST($1 AS date)", "$2", "$3", organization="$4")
_DAY_LOCK: Final = day_lock_sql("CAST($1 AS date)")
_ROLLED: Final = "SELECT day FROM usage_rollup_days WHERE day = ANY($1::date[]) ORDER BY day"


async def refresh_summaries(conn: Any, touched: Iterable[tuple[uuid.UUID, date]]) -> int:
    """Rebuild the summaries of each (organization, UTC day) in ``touched`` whose day the rollup
    has run for (the others have none yet), on the asyncpg ``conn`` in the caller's
    transaction; the number of pairs rebuilt. Days are locked in order."""
    pairs = set(touched)
    if not pairs:
        return 0
    rolled = [r["day"] for r in await conn.fetch(_ROLLED, sorted({day for _, day in pairs}))]
    done = 0
    for day in rolled:
        await conn.execute(_DAY_LOCK, day)
        start = datetime.combine(day, time.min, tzinfo=UTC)
        for org in sorted(org for org, d in pairs if d == day):
            await conn.execute(_ORG_DAY, day, start, start + timedelta(days=1), org)
            done += 1
    return done
