"""Shared set-up for benchmarks: a fresh migrated database, organizations, events, timing."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from biz2bricks_core import DatabaseConfig, DatabaseManager, UsageEvent
from biz2bricks_core.localservices import LocalService, start_postgres
from tests.support import create_database, drop_database, migrate


@contextmanager
def bench_database() -> Iterator[tuple[str, LocalService]]:
    """A fresh migrated database on the test server (TEST_DATABASE_URL, else embedded)."""
    server = start_postgres()
    url = create_database(server.address, prefix="b2b_bench")
    migrate(url)
    os.environ["DATABASE_URL"] = url
    try:
        yield url, server
    finally:
        drop_database(url)
        server.stop()


def manager(url: str, pool_size: int = 5) -> DatabaseManager:
    """A DatabaseManager on ``url``."""
    return DatabaseManager(DatabaseConfig(database_url=url, db_pool_size=pool_size))


async def provision_orgs(url: str, count: int, plan: str = "business") -> list[uuid.UUID]:
    """``count`` organizations with usage_limits rows, inserted in one statement each table."""
    import asyncpg
    from sqlalchemy.engine import make_url

    from tests.support import libpq_url

    orgs = sorted(uuid.uuid4() for _ in range(count))
    conn = await asyncpg.connect(libpq_url(make_url(url)))
    try:
        await conn.execute(
            "INSERT INTO organizations (id, name) SELECT o, 'bench' FROM unnest($1::uuid[]) o",
            orgs,
        )
        await conn.execute(
            "INSERT INTO usage_limits (organization_id, plan, token_limit, storage_limit_bytes,"
            " period_start, period_end) SELECT o, $2, NULL, NULL, date_trunc('month', now()),"
            " date_trunc('month', now()) + interval '1 month' FROM unnest($1::uuid[]) o",
            orgs,
            plan,
        )
    finally:
        await conn.close()
    return orgs


MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("google", "gemini-2.5-flash"),
]


def events(orgs: list[uuid.UUID], count: int) -> list[UsageEvent]:
    """Valid events spread over the organizations and a few models, occurring just now."""
    now = datetime.now(UTC) - timedelta(seconds=30)
    out = []
    for i in range(count):
        provider, model = MODELS[i % len(MODELS)]
        out.append(
            UsageEvent(
                event_id=uuid.uuid4(),
                organization_id=orgs[i % len(orgs)],
                occurred_at=now,
                provider=provider,
                model=model,
                input_tokens=1000 + i % 500,
                cache_read_tokens=i % 300,
                output_tokens=200 + i % 50,
            )
        )
    return out


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100) of samples."""
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


class Timer:
    """Wall-clock seconds of a block."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
