"""Period arithmetic and credit consumption: the SQL the writer runs equals the Python rule."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from sqlalchemy import text

from biz2bricks_core import DatabaseManager
from biz2bricks_core.credits import credits_after_period, credits_after_period_sql
from biz2bricks_core.periods import period_bounds, period_end_sql, period_start_sql

MOMENTS = [
    datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 3, 1, tzinfo=UTC),
    datetime(2024, 12, 31, 23, 30, tzinfo=UTC),
    datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC),
    datetime(2025, 6, 15, 12, tzinfo=UTC),
    datetime.fromisoformat("2025-07-01T01:30:00+05:00"),  # still June in UTC
]


async def test_period_bounds_in_sql_equal_period_bounds_in_python(db: DatabaseManager) -> None:
    statement = text(
        "SELECT s, "
        + period_end_sql("s", "CAST(:u AS text)")
        + " FROM (SELECT "
        + period_start_sql("CAST(:at AS timestamptz)", "CAST(:u AS text)")
        + " AS s) t"
    )
    async with db.engine.connect() as conn:
        for at, unit in itertools.product(MOMENTS, ("month", "year")):
            start, end = (await conn.execute(statement, {"at": at, "u": unit})).one()
            assert (start, end) == period_bounds(at, unit), (at, unit)


async def test_credit_consumption_in_sql_equals_the_python_rule(db: DatabaseManager) -> None:
    statement = text(
        "SELECT "
        + credits_after_period_sql(
            "CAST(:credits AS bigint)", "CAST(:used AS bigint)", "CAST(:limit AS bigint)"
        )
    )
    cases = itertools.product((0, 500, 10_000), (0, 999, 1_000, 1_500, 20_000), (None, 0, 1_000))
    async with db.engine.connect() as conn:
        for credits, used, limit in cases:
            params = {"credits": credits, "used": used, "limit": limit}
            sql = (await conn.execute(statement, params)).scalar_one()
            assert sql == credits_after_period(credits, used, limit), params
