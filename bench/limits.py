"""Limit checks on the request path: p50/p99 latency against raw asyncpg on the same pool.

check_token_limit() against raw `SELECT 1`, reserve_storage() against a raw single-row UPDATE,
each over N calls, interleaved in rounds so that machine noise hits both sides alike.
Bar: p99 <= 1.5x the raw p99. Run: uv run python -m bench.limits [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from bench._common import add_grants, bench_database, manager, percentile
from biz2bricks_core import DatabaseManager, UsageService


async def timed(call: Callable[[], Awaitable[object]], n: int, out: list[float]) -> None:
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)


async def measure(url: str, calls: int, rounds: int, grants: int) -> None:
    db: DatabaseManager = manager(url)
    service = UsageService(db)
    org = uuid.uuid4()
    await service.provision_organization(org, plan="business")
    async with db.driver() as driver:  # a limited plan, so the allowance reads the grants
        await driver.execute(
            "UPDATE usage_limits SET token_limit = 1000000 WHERE organization_id = $1", org
        )
        await add_grants(driver, [org], grants, 1_000_000)

    async def raw_select() -> None:
        async with db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.fetchval("SELECT 1")  # type: ignore[union-attr]

    async def raw_update() -> None:
        async with db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute(  # type: ignore[union-attr]
                "UPDATE usage_limits SET storage_used_bytes = storage_used_bytes + $2"
                " WHERE organization_id = $1",
                org,
                1,
            )

    samples: dict[str, list[float]] = {k: [] for k in ("select1", "check", "update", "reserve")}
    per_round = calls // rounds
    for _name, call in [
        ("select1", raw_select),
        ("check", lambda: service.check_token_limit(org)),
        ("update", raw_update),
        ("reserve", lambda: service.reserve_storage(org, 1)),
    ]:
        await timed(call, 500, [])  # warm-up: prepared statements, pool
    for _ in range(rounds):
        await timed(raw_select, per_round, samples["select1"])
        await timed(lambda: service.check_token_limit(org), per_round, samples["check"])
        await timed(raw_update, per_round, samples["update"])
        await timed(lambda: service.reserve_storage(org, 1), per_round, samples["reserve"])
    await db.dispose()
    us = {k: (percentile(v, 50) * 1e6, percentile(v, 99) * 1e6) for k, v in samples.items()}
    for name, label in [
        ("select1", "raw SELECT 1"),
        ("check", "check_token_limit()"),
        ("update", "raw single-row UPDATE"),
        ("reserve", "reserve_storage()"),
    ]:
        print(f"{label:24s} p50 {us[name][0]:7.0f} us   p99 {us[name][1]:7.0f} us")
    print(
        f"ratio p99: check_token_limit {us['check'][1] / us['select1'][1]:.2f}x, "
        f"reserve_storage {us['reserve'][1] / us['update'][1]:.2f}x (bar <= 1.5)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--grants", type=int, default=5, help="live credit grants of the org")
    args = parser.parse_args()
    with bench_database() as (url, _server):
        asyncio.run(measure(url, args.calls, args.rounds, args.grants))
