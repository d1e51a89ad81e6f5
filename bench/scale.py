"""Costs that must not grow with history: the write path, rollup, reconcile and get_usage on an
empty usage_events and on one prefilled with events made the same way (v7 ids), same run.

The prefill is generated in SQL (ids built from increasing millisecond times with the v7
layout, spread over the last ``--days`` days and the organizations), then VACUUM ANALYZEd.
Bar (issue 21): the write path at the prefilled size >= 0.85x of its empty-table rate; rollup
of one day, reconcile and get_usage report both sizes and must not grow beyond the rows they
read. Then ``archive`` of the oldest prefilled month: rows/s, Parquet size against the
partition's size on disk.
Run: uv run python -m bench.scale [--prefill 20000000] [--events 50000] [--days 60]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from bench._common import Timer, bench_database, events, manager, provision_orgs
from biz2bricks_consumer.batching import Batch
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_core.event_ids import event_id_month_sql
from biz2bricks_core.event_partitions import ensure_partitions
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_core.retention import add_months, month_of
from biz2bricks_rollup.archive import archive_month
from biz2bricks_rollup.archive_store import LocalStore
from biz2bricks_rollup.reconcile import find_drift
from biz2bricks_rollup.rollup import run_rollup
from tests.factories import message_for
from tests.support import libpq_url

PREFILL = """
INSERT INTO usage_events (event_id, organization_id, occurred_at, provider, model,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, id_month)
SELECT e, o, t, 'openai', 'gpt-4o', 1000 + g % 500, 200 + g % 50, g % 300, 0,
    (1000 + g % 500) * 0.0000025, {id_month}
FROM (
    SELECT g, ($2::uuid[])[1 + g % array_length($2::uuid[], 1)] AS o,
        $3::timestamptz + g * $4::interval AS t,
        CAST(lpad(to_hex((extract(epoch FROM $3::timestamptz + g * $4::interval) * 1000)::bigint),
            12, '0') || '7' || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15)
            AS uuid) AS e
    FROM generate_series($5::bigint, $1::bigint) AS g
) s
"""
CHUNK = 1_000_000


async def prefill(url: str, orgs: list[uuid.UUID], total: int, days: int) -> float:
    """Insert ``total`` events over the last ``days`` days, oldest first; seconds taken."""
    start = datetime.now(UTC) - timedelta(days=days)
    step = timedelta(days=days) / max(total, 1)
    conn = await asyncpg.connect(libpq_url(make_url(url)))
    try:
        month, months = month_of(start), []
        while month <= month_of(datetime.now(UTC)):
            months.append(month)
            month = add_months(month, 1)
        await ensure_partitions(conn, months)
        statement = PREFILL.format(id_month=event_id_month_sql("e"))
        with Timer() as t:
            for first in range(1, total + 1, CHUNK):
                last = min(first + CHUNK - 1, total)
                await conn.execute(statement, last, orgs, start, step, first)
            await conn.execute("VACUUM ANALYZE usage_events")
    finally:
        await conn.close()
    return t.seconds


async def write_rate(db: DatabaseManager, orgs: list[uuid.UUID], n: int) -> float:
    book = await load_price_book(db, ModelNames())
    writer = BatchWriter(db, lambda: book)
    items = events(orgs, n)
    batches = [
        Batch(events=items[i : i + 1000], sources=[message_for(e) for e in items[i : i + 1000]])
        for i in range(0, n, 1000)
    ]
    with Timer() as t:
        for batch in batches:
            await writer.write(batch)
    return n / t.seconds


async def reads(db: DatabaseManager, org: uuid.UUID) -> tuple[float, float, float]:
    """Seconds of: the rollup of yesterday, reconcile, get_usage of one organization."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
    with Timer() as t_rollup:
        await run_rollup(db, [yesterday])
    with Timer() as t_reconcile:
        await find_drift(db)
    service = UsageService(db)
    with Timer() as t_usage:
        for _ in range(100):
            await service.get_usage(org)
    return t_rollup.seconds, t_reconcile.seconds, t_usage.seconds / 100


async def measure(url: str, prefill_rows: int, n_events: int, days: int) -> None:
    orgs = await provision_orgs(url, 1000)
    db = manager(url)
    empty_rate = await write_rate(db, orgs, n_events)
    empty_reads = await reads(db, orgs[0])
    print(f"empty table: write path {empty_rate:,.0f} events/s")
    seconds = await prefill(url, orgs, prefill_rows, days)
    print(f"prefilled {prefill_rows:,} events in {seconds:.1f}s")
    full_rate = await write_rate(db, orgs, n_events)
    full_reads = await reads(db, orgs[0])
    for name, a, b in zip(
        ("rollup of one day", "reconcile", "get_usage"), empty_reads, full_reads, strict=True
    ):
        print(f"{name}: empty {a * 1000:.1f} ms, prefilled {b * 1000:.1f} ms")
    oldest = month_of(datetime.now(UTC) - timedelta(days=days))
    async with db.driver() as conn:
        size = await conn.fetchval(
            "SELECT pg_total_relation_size(to_regclass($1))",
            f"usage_events_y{oldest:%Y}m{oldest:%m}",
        )
    with tempfile.TemporaryDirectory() as root:
        with Timer() as t_archive:
            result = await archive_month(db, LocalStore(Path(root)), oldest, 1_000_000)
        print(
            f"archive {oldest:%Y-%m}: {result.rows:,} rows in {t_archive.seconds:.1f}s "
            f"({result.rows / t_archive.seconds:,.0f} rows/s); Parquet "
            f"{result.parquet_bytes / 1e6:.1f} MB vs partition {(size or 0) / 1e6:.1f} MB "
            f"on disk (table + indexes)"
        )
    await db.dispose()
    print(
        f"write path at {prefill_rows:,}: {full_rate:,.0f} events/s, "
        f"{full_rate / empty_rate:.2f}x of the empty table (bar >= 0.85)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--prefill", type=int, default=20_000_000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=60)
    args = parser.parse_args()
    with bench_database() as (url, _server):
        asyncio.run(measure(url, args.prefill, args.events, args.days))


if __name__ == "__main__":
    main()
