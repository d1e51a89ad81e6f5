"""Rollup of one day with 1M events against a raw INSERT .. SELECT .. GROUP BY of the same rows.

Events are generated in SQL (generate_series) across 1,000 organizations and 10 models. The raw
baseline writes the same aggregation into a table shaped like usage_daily_summaries (same
primary key and foreign key). Rounds alternate; each starts from empty summaries for the day.
Bar: ours <= 1.3x raw. Run: uv run python -m bench.rollup [--events 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import date

from sqlalchemy import text

from bench._common import Timer, bench_database, manager, provision_orgs
from biz2bricks_rollup.rollup import day_bounds, rollup_day

DAY = date(2026, 1, 15)
RAW = text(
    "INSERT INTO bench_raw_summaries (organization_id, day, provider, model, request_count,"
    " input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd)"
    " SELECT organization_id, :day, provider, model, count(*), sum(input_tokens),"
    " sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens), sum(cost_usd)"
    " FROM usage_events WHERE occurred_at >= :start AND occurred_at < :end"
    " GROUP BY organization_id, provider, model"
)


async def measure(url: str, n_events: int, rounds: int) -> None:
    orgs = await provision_orgs(url, 1000)
    db = manager(url)
    start, end = day_bounds(DAY)
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO usage_events (event_id, organization_id, occurred_at, provider, model,"
                " input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,"
                " id_month)"  # v4 ids: the partition without time (biz2bricks_core.event_ids)
                " SELECT gen_random_uuid(), (CAST(:orgs AS uuid[]))[1 + (i / 10) % 1000],"
                " CAST(:start AS timestamptz) + (i % 86400) * interval '1 second',"
                " 'provider' || (i % 10 / 4),"
                " 'model-' || (i % 10), 1000 + i % 500, 200 + i % 50, i % 300, i % 7,"
                " (1000 + i % 500) * 0.0000025, DATE '0001-01-01'"
                " FROM generate_series(1, :n) AS i"
            ),
            {"orgs": orgs, "start": start, "n": n_events},
        )
        await conn.execute(
            text(
                "CREATE TABLE bench_raw_summaries (LIKE usage_daily_summaries INCLUDING ALL,"
                " FOREIGN KEY (organization_id) REFERENCES organizations (id))"
            )
        )
    async with db.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE usage_events"))
    print(f"generated {n_events:,} events for {DAY}")
    ours_s = raw_s = 0.0
    for r in range(rounds):
        async with db.engine.begin() as conn:
            await conn.execute(text("DELETE FROM usage_daily_summaries WHERE day = :d"), {"d": DAY})
            await conn.execute(text("TRUNCATE bench_raw_summaries"))
        async with db.engine.connect() as conn:
            with Timer() as t_raw:
                async with conn.begin():
                    await conn.execute(RAW, {"day": DAY, "start": start, "end": end})
            with Timer() as t_ours:
                result = await rollup_day(conn, DAY)
        raw_s += t_raw.seconds
        ours_s += t_ours.seconds
        print(
            f"round {r + 1}/{rounds}: raw {t_raw.seconds:.2f}s, rollup {t_ours.seconds:.2f}s "
            f"({result.groups:,} groups)"
        )
    async with db.engine.connect() as conn:
        again = await rollup_day(conn, DAY)
    print(f"re-run on unchanged data: {again.seconds:.2f}s, {again.written} rows rewritten")
    await db.dispose()
    print(f"raw INSERT .. SELECT .. GROUP BY: {raw_s / rounds:.2f}s per day")
    print(f"rollup_day (upsert + stale-row delete + bookkeeping): {ours_s / rounds:.2f}s per day")
    print(f"ratio {ours_s / raw_s:.2f}x (bar <= 1.3)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with bench_database() as (url, _server):
        asyncio.run(measure(url, args.events, args.rounds))
