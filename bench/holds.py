"""Token holds on the request path: reserve_tokens() latency and throughput.

1. p50/p99 of reserve_tokens() against a raw single-row conditional UPDATE of usage_limits on
   the same pool, sequential calls interleaved in rounds so machine noise hits both alike.
2. Throughput on ONE hot organization from 50 concurrent callers (every reservation of that
   organization serializes on its usage_limits row), and the same callers over 10 organizations.
Bar: reserve_tokens() p99 <= 1.5x the raw UPDATE's p99 (printed last).
Run: uv run python -m bench.holds [--calls 20000] [--burst 20000] [--callers 50]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

from bench._common import add_grants, bench_database, manager, percentile
from biz2bricks_core import DatabaseManager, UsageService

RAW_CONDITIONAL_UPDATE = (
    "UPDATE usage_limits SET tokens_reserved = tokens_reserved + $2"
    " WHERE organization_id = $1"
    " AND tokens_used_period + tokens_reserved + $2"
    " <= token_limit + grants_consumed_period + grants_remaining"
    " RETURNING tokens_used_period, tokens_reserved"
)
HUGE_LIMIT = 10**15  # no reservation is ever refused: every call writes a hold


async def timed(call: Callable[[], Awaitable[object]], n: int, out: list[float]) -> None:
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)


GRANTS_PER_ORG = 5  # live credit grants of every organization (--grants)


async def limited_org(db: DatabaseManager, service: UsageService) -> uuid.UUID:
    org = uuid.uuid4()
    await service.provision_organization(org, plan="free")
    async with db.driver() as driver:
        await driver.execute(
            "UPDATE usage_limits SET token_limit = $2 WHERE organization_id = $1", org, HUGE_LIMIT
        )
        await add_grants(driver, [org], GRANTS_PER_ORG, 1_000_000)
    return org


async def latency(db: DatabaseManager, service: UsageService, calls: int, rounds: int) -> float:
    org = await limited_org(db, service)

    async def raw_update() -> None:
        async with db.driver() as driver:
            await driver.fetchrow(RAW_CONDITIONAL_UPDATE, org, 1)

    async def reserve() -> None:
        await service.reserve_tokens(org, 1)

    samples: dict[str, list[float]] = {"update": [], "reserve": []}
    await timed(raw_update, 500, [])  # warm-up: prepared statements, pool, function plans
    await timed(reserve, 500, [])
    per_round = calls // rounds
    for _ in range(rounds):
        await timed(raw_update, per_round, samples["update"])
        await timed(reserve, per_round, samples["reserve"])
    us = {k: (percentile(v, 50) * 1e6, percentile(v, 99) * 1e6) for k, v in samples.items()}
    print(f"raw conditional UPDATE   p50 {us['update'][0]:7.0f} us   p99 {us['update'][1]:7.0f} us")
    print(
        f"reserve_tokens()         p50 {us['reserve'][0]:7.0f} us   p99 {us['reserve'][1]:7.0f} us"
    )
    return us["reserve"][1] / us["update"][1]


async def throughput(
    service: UsageService, orgs: list[uuid.UUID], calls: int, callers: int
) -> float:
    """Reservations per second from ``callers`` concurrent callers over ``orgs``."""
    per_caller = calls // callers
    reasons: Counter[str] = Counter()

    async def caller(i: int) -> None:
        org = orgs[i % len(orgs)]
        for _ in range(per_caller):
            reasons[(await service.reserve_tokens(org, 1)).reason] += 1

    start = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    seconds = time.perf_counter() - start
    if set(reasons) != {"ok"}:
        raise RuntimeError(f"every reservation should be held, got {dict(reasons)}")
    return per_caller * callers / seconds


async def measure(url: str, calls: int, rounds: int, burst: int, callers: int) -> None:
    db = manager(url, pool_size=callers)
    service = UsageService(db)
    ratio = await latency(db, service, calls, rounds)
    hot = [await limited_org(db, service)]
    spread = [await limited_org(db, service) for _ in range(10)]
    await throughput(service, spread, min(burst, 2_000), callers)  # warm the whole pool
    hot_rate = await throughput(service, hot, burst, callers)
    spread_rate = await throughput(service, spread, burst, callers)
    await db.dispose()
    print(f"throughput, 1 hot organization, {callers} callers: {hot_rate:,.0f} reservations/s")
    print(f"throughput, 10 organizations, {callers} callers: {spread_rate:,.0f} reservations/s")
    print(f"ratio p99: reserve_tokens {ratio:.2f}x raw conditional UPDATE (bar <= 1.5)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--burst", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--grants", type=int, default=5, help="live credit grants per org")
    args = parser.parse_args()
    GRANTS_PER_ORG = args.grants
    with bench_database() as (url, _server):
        asyncio.run(measure(url, args.calls, args.rounds, args.burst, args.callers))
