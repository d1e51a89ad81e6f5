"""query_usage over 30 days of one organization against the raw GROUP BY over usage_events.

One organization with --events events (default 1M) over the last 30 days up to now (200
users, 10 operations, 8 models, one of them unpriced), received as they occurred; the rollup
runs for the 29 past days, so today is read from events. Two queries (by day and model, by
user) run --rounds times each, alternating with the raw GROUP BY that gives the same answer;
the answers are compared. Then the dashboard's five API calls go through a real uvicorn
server --calls times each: their p50 and p99. Bar: query_usage >= 10x faster than the raw
GROUP BY. Run: uv run python -m bench.usage_query [--events 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any

import httpx
import uvicorn
from sqlalchemy import text

from bench._common import Timer, bench_database, manager, percentile, provision_orgs
from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_core.event_ids import event_id_month_sql
from biz2bricks_core.event_partitions import ensure_partitions
from biz2bricks_core.retention import month_of
from biz2bricks_devtools.localservices import find_free_port
from biz2bricks_rollup.rollup import run_rollup

# Time-ordered (v7) ids made from each event's time, as the producer makes them, and the
# partition key computed from them as the writer does (biz2bricks_core.event_ids).
_V7 = (
    "CAST(lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || '7'"
    " || substr(md5(i::text), 1, 3) || '8' || substr(md5(i::text), 4, 15) AS uuid)"
)
GENERATE = text(
    "INSERT INTO usage_events (event_id, organization_id, user_id, occurred_at, received_at,"
    " provider, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
    " cost_usd, operation, id_month)"
    f" SELECT e, :org, (CAST(:users AS uuid[]))[1 + (i * 7919) % 200], t,"
    " t + interval '2 seconds', 'provider-' || ((i * 13) % 8 / 3), 'model-' || ((i * 13) % 8),"
    " 500 + i % 1500, 50 + i % 400, i % 300, i % 50,"
    " CASE WHEN (i * 13) % 8 = 7 THEN NULL ELSE (500 + i % 1500) * 0.0000025 END,"
    f" 'operation-' || ((i * 31) % 10), {event_id_month_sql('e')}"
    " FROM generate_series(CAST(0 AS bigint), :n - 1) AS i,"
    " LATERAL (SELECT CAST(:start AS timestamptz) + (CAST(:span AS interval) * i / :n)) AS s(t),"
    f" LATERAL (SELECT {_V7}) AS v(e)"
)
RAW = {
    "by day and model": (
        "SELECT date_trunc('day', occurred_at, 'UTC') AS w, model AS g, count(*),"
        " sum(input_tokens + output_tokens), count(*) - count(cost_usd)"
        " FROM usage_events WHERE organization_id = :org AND occurred_at >= :start"
        " AND occurred_at < :end GROUP BY 1, 2 ORDER BY 1, 2"
    ),
    "by user": (
        "SELECT NULL AS w, CAST(user_id AS text) AS g, count(*),"
        " sum(input_tokens + output_tokens), count(*) - count(cost_usd)"
        " FROM usage_events WHERE organization_id = :org AND occurred_at >= :start"
        " AND occurred_at < :end GROUP BY 1, 2 ORDER BY 1, 2"
    ),
}
OURS: dict[str, dict[str, Any]] = {
    "by day and model": {"window": "day", "group_by": ["model"]},
    "by user": {"group_by": ["user_id"]},
}


async def seed(url: str, n_events: int) -> tuple[uuid.UUID, datetime, datetime]:
    [org] = await provision_orgs(url, 1)
    db = manager(url)
    now = datetime.now(UTC) - timedelta(minutes=1)
    today = datetime.combine(now.date(), dtime.min, tzinfo=UTC)
    start = today - timedelta(days=29)
    users = [uuid.uuid4() for _ in range(200)]
    async with db.driver() as driver:
        await ensure_partitions(driver, sorted({month_of(start), month_of(now)}))
    async with db.engine.begin() as conn:
        params = {"org": org, "users": users, "start": start, "span": now - start, "n": n_events}
        await conn.execute(GENERATE, params)
    async with db.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE usage_events"))
    with Timer() as rolled:
        await run_rollup(db, [(start + timedelta(days=d)).date() for d in range(29)])
    async with db.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE"))
    print(f"generated {n_events:,} events over 30 days; rollup of 29 days {rolled.seconds:.1f}s")
    await db.dispose()
    return org, start, today + timedelta(days=1)


async def compare(
    db: DatabaseManager, org: uuid.UUID, start: datetime, end: datetime, rounds: int
) -> float:
    usage = UsageService(db)
    worst = float("inf")
    for name, sql in RAW.items():
        ours_s, raw_s = [], []
        for _ in range(rounds):
            async with db.engine.connect() as conn:
                with Timer() as t_raw:
                    raw = [
                        tuple(r)
                        for r in await conn.execute(
                            text(sql), {"org": org, "start": start, "end": end}
                        )
                    ]
            with Timer() as t_ours:
                rows = await usage.query_usage(org, start=start, end=end, **OURS[name])
            raw_s.append(t_raw.seconds)
            ours_s.append(t_ours.seconds)
        got = [
            (
                r.window_start,
                next(iter(r.groups.values())),
                r.requests,
                r.total_tokens,
                r.unpriced_events,
            )
            for r in rows
        ]
        assert got == raw, f"{name}: the answers differ"
        ratio = statistics.median(raw_s) / statistics.median(ours_s)
        worst = min(worst, ratio)
        print(
            f"{name}: raw GROUP BY {statistics.median(raw_s) * 1000:.1f} ms, query_usage "
            f"{statistics.median(ours_s) * 1000:.1f} ms (median of {rounds}), {len(rows)} rows,"
            f" same answer; {ratio:.1f}x faster"
        )
    return worst


def dashboard_calls(url: str, org: uuid.UUID, calls: int) -> None:
    """The dashboard's API calls through a real server: p50 and p99 of each."""
    from tests.query.conftest import usage_app

    port = find_free_port()
    server = uvicorn.Server(
        uvicorn.Config(usage_app(url), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    now = datetime.now(UTC)
    day = now.date()
    month = day.replace(day=1).isoformat()
    paths: dict[str, tuple[str, dict[str, str]]] = {
        "summary": (f"/usage/{org}/summary", {}),
        "30 days by model": (
            f"/usage/{org}",
            {
                "from": (day - timedelta(days=29)).isoformat(),
                "to": (day + timedelta(days=1)).isoformat(),
                "window": "day",
                "group_by": "model",
            },
        ),
        "period by user": (f"/usage/{org}", {"from": month, "group_by": "user_id"}),
        "period by operation": (f"/usage/{org}", {"from": month, "group_by": "operation"}),
        "alerts": (f"/usage/{org}/alerts", {"limit": "8"}),
    }
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for name, (path, params) in paths.items():
            samples = []
            for _ in range(calls):
                with Timer() as t:
                    client.get(path, params=params).raise_for_status()
                samples.append(t.seconds * 1000)
            print(
                f"dashboard call {name}: p50 {statistics.median(samples):.1f} ms, "
                f"p99 {percentile(samples, 99):.1f} ms ({calls} calls)"
            )
    server.should_exit = True
    thread.join(timeout=15)


async def measure(url: str, n_events: int, rounds: int) -> tuple[uuid.UUID, float]:
    org, start, end = await seed(url, n_events)
    db = manager(url)
    try:
        return org, await compare(db, org, start, end, rounds)
    finally:
        await db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    with bench_database() as (url, _server):
        org, ratio = asyncio.run(measure(url, args.events, args.rounds))
        dashboard_calls(url, org, args.calls)
    print(f"ratio {ratio:.1f}x (bar >= 10, the slower of the two queries)")
