"""Shared set-up for benchmarks: a fresh migrated database, organizations, events, timing."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from biz2bricks_core import DatabaseConfig, DatabaseManager, UsageEvent, new_event_id
from biz2bricks_devtools.localservices import LocalService, start_postgres
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
                event_id=new_event_id(),
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


class CpuMeter:
    """CPU seconds spent during a block: this process, the Pub/Sub emulator, the whole machine.

    Linux only (reads /proc); elsewhere every figure is 0. The emulator is any process whose
    command line names the pubsub emulator; "other" (machine minus the two) is mostly
    PostgreSQL and the kernel's share of the network traffic.
    """

    _tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @classmethod
    def _machine(cls) -> float:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return 0.0
        return (sum(fields) - fields[3] - fields[4]) / cls._tick  # minus idle and iowait

    @classmethod
    def _emulator(cls) -> float:
        total = 0.0
        for pid in (
            (p for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ()
        ):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"pubsub-emulator" not in f.read():
                        continue
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
                total += (int(stat[11]) + int(stat[12])) / cls._tick
            except OSError:
                continue
        return total

    def __enter__(self) -> CpuMeter:
        self._start = (time.process_time(), self._emulator(), self._machine(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        own, emulator, machine, wall = self._start
        self.own = time.process_time() - own
        self.emulator = self._emulator() - emulator
        self.machine = self._machine() - machine
        self.wall = time.perf_counter() - wall

    def per_message(self, count: int) -> str:
        """CPU microseconds per message, by whom, and how busy the machine's cores were."""
        other = max(self.machine - self.own - self.emulator, 0.0)
        us = 1e6 / count
        return (
            f"CPU per message: this process {self.own * us:.0f} us, emulator "
            f"{self.emulator * us:.0f} us, other {other * us:.0f} us; "
            f"cores busy {self.machine / self.wall:.2f} of {os.cpu_count()}"
        )


class Timer:
    """Wall-clock seconds of a block."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


async def add_grants(conn: Any, orgs: list[uuid.UUID], per_org: int, tokens: int) -> None:
    """``per_org`` live credit grants of ``tokens`` for each organization, with the expiries
    and priorities spread as real grants are, and the grants' cache written."""
    from biz2bricks_core.credits import REFRESH_GRANTS

    await conn.execute(
        "INSERT INTO credit_grants (organization_id, tokens, remaining, priority, expires_at)"
        " SELECT o, $2, $2, 10 - i % 3, CASE WHEN i % 2 = 0 THEN NULL"
        "   ELSE now() + make_interval(days => 30 * i) END"
        " FROM unnest($1::uuid[]) o CROSS JOIN generate_series(1, $3) i",
        orgs,
        tokens,
        per_org,
    )
    await conn.execute(REFRESH_GRANTS, orgs)
