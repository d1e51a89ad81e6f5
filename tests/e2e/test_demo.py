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
from demo._report import render_table
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
            reasons = (
                await conn.execute(
                    text(
                        "SELECT reason_code, min(reason) FROM usage_event_rejects"
                        " GROUP BY reason_code"
                    )
                )
            ).all()
        assert (events, orgs, rejects) == (400, 3, 5)
        assert await find_drift(db) == []
        check_the_tables(result.stdout, 3, {code: reason for code, reason in reasons})
    finally:
        await db.dispose()


def read_table(stdout: str, title: str) -> tuple[list[str], list[list[str]]]:
    """The headers and rows of a table the demo printed; a wrapped cell's lines joined."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    header, rule = lines[start + 1], lines[start + 2]
    spans = [m.span() for m in re.finditer(r"-+", rule)]
    spans[-1] = (spans[-1][0], None)  # type: ignore[assignment]

    def cells(line: str) -> list[str]:
        return [line[a:b].strip() for a, b in spans]

    rows: list[list[str]] = []
    for line in lines[start + 3 :]:
        if not line.strip():
            break
        values = cells(line)
        if values[0] or not rows:
            rows.append(values)
        else:  # the continuation of a wrapped cell
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], values, strict=True)]
    return cells(header), rows


def test_a_long_reason_wraps_between_words_and_amounts_align_right() -> None:
    reason = "invalid event: occurred_at lies 3 hours in the future (clock skew?) " * 3
    lines = render_table("t", ["code", "n", "reason"], [["future", 1234, reason]], wrap={2: 30})
    assert all(len(line) <= len("future  1,234  ") + 30 for line in lines[3:])
    header, [row] = read_table("\n".join([*lines, ""]), "t")
    assert header == ["code", "n", "reason"]
    assert row == ["future", "1,234", " ".join(reason.split())]  # every word whole, in order
    assert lines[1].endswith("    n  reason")  # amounts right-aligned, their header too
    assert lines[3].startswith("future  1,234")


def check_the_tables(stdout: str, orgs: int, rejects: dict[str, str]) -> None:
    """Labelled columns, summaries sorted, every reject reason printed whole."""
    usage_header, usage_rows = read_table(stdout, "Usage this period against limits")
    assert usage_header == [
        "organization",
        "plan",
        "tokens used",
        "token limit",
        "% of plan",
        "cost (USD)",
    ]
    assert [r[0] for r in usage_rows] == [f"org{i + 1}-{r[1]}" for i, r in enumerate(usage_rows)]
    assert len(usage_rows) == orgs
    decision_header, _ = read_table(stdout, "check_token_limit")
    assert decision_header[-2:] == ["tokens used", "tokens left"]
    summary_header, summaries = read_table(stdout, "Daily summaries")
    assert summary_header[:2] == ["day", "organization"]
    assert "tokens used" in summary_header
    keys = [(r[0], int(r[1].split("-")[0].removeprefix("org")), r[2], r[3]) for r in summaries]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    reject_header, printed = read_table(stdout, "Rejected messages")
    assert reject_header == ["reason code", "messages", "first reason, in full"]
    assert {r[0]: r[2] for r in printed} == {
        code: " ".join(reason.split()) for code, reason in rejects.items()
    }
