"""The demo, end to end on the session's services: exit code 0 and the counters it left."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from biz2bricks_core import DatabaseConfig, DatabaseManager
from biz2bricks_devtools.localservices import LocalService
from biz2bricks_rollup.reconcile import find_drift
from tests.support import ROOT, create_database, drop_database


@pytest.fixture
def demo_database(postgres_server: LocalService) -> Iterator[str]:
    url = create_database(postgres_server.address, prefix="b2b_demo_test")
    yield url
    drop_database(url)


@pytest.mark.e2e
async def test_the_demo_runs_green_and_leaves_exact_counters(
    demo_database: str, pubsub_emulator: LocalService
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": demo_database,
        "PUBSUB_EMULATOR_HOST": pubsub_emulator.address,
        # A tiny in-flight cap sends most events through the spool and its replay.
        "USAGE_MAX_IN_FLIGHT_MESSAGES": "20",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "demo", "--events", "400", "--orgs", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all checks held" in result.stdout
    through_spool = re.search(r"\(([\d,]+) of them through the spool\)", result.stdout)
    assert through_spool is not None, result.stdout[-3000:]
    assert int(through_spool.group(1).replace(",", "")) > 0
    db = DatabaseManager(DatabaseConfig(database_url=demo_database))
    try:
        async with db.engine.connect() as conn:
            events = (await conn.execute(text("SELECT count(*) FROM usage_events"))).scalar_one()
            orgs = (await conn.execute(text("SELECT count(*) FROM usage_limits"))).scalar_one()
            rejects = (
                await conn.execute(text("SELECT count(*) FROM usage_event_rejects"))
            ).scalar_one()
        assert (events, orgs, rejects) == (400, 3, 5)
        assert await find_drift(db) == []
    finally:
        await db.dispose()
