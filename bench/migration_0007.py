"""Migration 0007 (usage_events to monthly partitions): seconds per million existing rows.

The rows are made as the producer made them before this release (v4 ids), in SQL, at 0006;
then ``alembic upgrade 0007`` is timed.
Run: uv run python -m bench.migration_0007 [--rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio

import asyncpg
from sqlalchemy.engine import make_url

from bench._common import Timer
from biz2bricks_devtools.localservices import start_postgres
from tests.support import create_database, drop_database, libpq_url, migrate

FILL = """
INSERT INTO organizations (id, name) VALUES ('00000000-0000-4000-8000-000000000001', 'bench');
INSERT INTO usage_events (event_id, organization_id, occurred_at, provider, model,
    input_tokens, output_tokens, cost_usd, metadata)
SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001',
    now() - g * interval '1 second', 'openai', 'gpt-4o', 1000 + g % 500, 200, 0.0025,
    CASE WHEN g % 3 = 0 THEN '{{"doc": "x.pdf"}}'::jsonb END
FROM generate_series(1, {rows}) AS g;
"""


async def fill(url: str, rows: int) -> None:
    conn = await asyncpg.connect(libpq_url(make_url(url)))
    try:
        await conn.execute(FILL.format(rows=rows))
        await conn.execute("VACUUM ANALYZE usage_events")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="time migration 0007")
    parser.add_argument("--rows", type=int, default=1_000_000)
    rows = parser.parse_args().rows
    server = start_postgres()
    url = create_database(server.address, prefix="b2b_bench_migr")
    try:
        migrate(url, "0006")
        asyncio.run(fill(url, rows))
        with Timer() as t:
            migrate(url, "0007")
        print(
            f"0007 over {rows:,} rows: {t.seconds:.1f}s, {t.seconds / rows * 1e6:.1f}s per million"
        )
    finally:
        drop_database(url)
        server.stop()


if __name__ == "__main__":
    main()
