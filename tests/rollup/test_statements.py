"""Statements: open ones follow the facts, closed ones never change, later facts are adjustments."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from biz2bricks_core import DatabaseManager, InvalidArgumentError, UsageService
from biz2bricks_core.periods import period_bounds
from biz2bricks_core.statements import close_statements
from tests.factories import counters, make_event, provisioned_org, write_events


async def stored_body(db: DatabaseManager, org: object, start: datetime) -> str:
    async with db.engine.connect() as conn:
        return str(
            (
                await conn.execute(
                    text(
                        "SELECT body FROM usage_statements"
                        " WHERE organization_id = :o AND period_start = :s"
                    ),
                    {"o": org, "s": start},
                )
            ).scalar_one()
        )


async def test_an_open_statement_shows_the_periods_usage_without_voided_events(
    db: DatabaseManager,
) -> None:
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await service.grant_credits(org, 10_000)
    events = [
        make_event(org, input_tokens=60_000, output_tokens=0),
        make_event(org, input_tokens=45_000, output_tokens=0, model="gpt-4o-mini"),
        make_event(org, input_tokens=1_000, output_tokens=0, request_id="dup"),
    ]
    await write_events(db, events)
    await service.void_events(org, request_id="dup", reason="duplicate")
    start, end = period_bounds(datetime.now(UTC))
    statement = await service.get_statement(org, start)
    assert (statement.status, statement.closed_at, statement.period_end) == ("open", None, end)
    assert [(x.model, x.requests) for x in statement.lines] == [("gpt-4o", 1), ("gpt-4o-mini", 1)]
    assert statement.tokens == 105_000
    # 5,000 beyond the free plan's 100,000, all paid by the grant (the voided call's 1,000
    # were given back to it)
    assert (statement.plan_limit, statement.credits_consumed, statement.overage_tokens) == (
        100_000,
        5_000,
        0,
    )
    with pytest.raises(InvalidArgumentError, match="start of a period"):
        await service.get_statement(org, start + timedelta(days=1))


async def test_a_closed_statement_never_changes_and_later_facts_are_adjustments(
    db: DatabaseManager,
) -> None:
    # Given usage in a period two months back, and its statement closed
    org = await provisioned_org(db)
    service = UsageService(db)
    old_start, old_end = period_bounds(datetime.now(UTC) - timedelta(days=62))
    old = [make_event(org, occurred_at=old_start + timedelta(days=3)) for _ in range(3)]
    await write_events(db, old)
    assert await close_statements(db, timedelta(0)) >= 1
    closed = await service.get_statement(org, old_start)
    body = await stored_body(db, org, old_start)
    assert (closed.status, closed.tokens) == ("closed", 3 * 1_100)
    assert await close_statements(db, timedelta(0)) == 0  # closed once
    # When a late event for that period arrives and one of its events is voided
    late = make_event(org, occurred_at=old_end - timedelta(hours=1), input_tokens=500)
    await write_events(db, [late])
    await service.void_events(org, event_ids=[old[0].event_id], reason="test traffic")
    # Then the closed statement is byte for byte what it was
    assert await stored_body(db, org, old_start) == body
    again = await service.get_statement(org, old_start)
    assert again.to_json() == closed.to_json() == body
    # And the open statement carries both, naming the period they belong to
    now_start, _ = period_bounds(datetime.now(UTC))
    current = await service.get_statement(org, now_start)
    assert current.lines == []
    adjustments = [(a.belongs_to, a.kind, a.requests, a.input_tokens) for a in current.adjustments]
    assert adjustments == [
        (old_start, "late_event", 1, 500),
        (old_start, "void", -1, -1_000),
    ]
    assert current.tokens == 600 - 1_100


def rollup_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "biz2bricks_rollup", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
        check=False,
    )


async def test_the_void_and_statement_commands(db: DatabaseManager) -> None:
    # Given two events of one request
    org = await provisioned_org(db)
    await write_events(db, [make_event(org, request_id="req-7") for _ in range(2)])
    # When the void command runs dry, then for real
    dry = await asyncio.to_thread(
        rollup_command,
        "void",
        "--org",
        str(org),
        "--request-id",
        "req-7",
        "--reason",
        "dup",
        "--dry-run",
    )
    assert dry.returncode == 0, dry.stderr
    assert "openai/gpt-4o: 2 event(s), 2,200 tokens" in dry.stdout
    assert "dry run: nothing changed" in dry.stdout
    assert (await counters(db, org))["tokens_used_period"] == 2_200
    done = await asyncio.to_thread(
        rollup_command, "void", "--org", str(org), "--request-id", "req-7", "--reason", "dup"
    )
    assert done.returncode == 0, done.stderr
    assert "voided 2 event(s) (2,200 tokens" in done.stdout
    assert (await counters(db, org))["tokens_used_period"] == 0
    # Then the statement command prints the period's statement
    month = datetime.now(UTC).strftime("%Y-%m")
    shown = await asyncio.to_thread(
        rollup_command, "statement", "--org", str(org), "--period", month
    )
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert (body["status"], body["tokens"], body["lines"]) == ("open", 0, [])
    bad = await asyncio.to_thread(
        rollup_command, "statement", "--org", str(org), "--period", "2025-13"
    )
    assert bad.returncode == 2
    assert "expected YYYY-MM" in bad.stderr
    # A round number of tokens too (asyncpg reads the sum 60,000 as Decimal('6E+4'))
    await write_events(
        db, [make_event(org, request_id="req-8", input_tokens=60_000, output_tokens=0)]
    )
    round_dry = await asyncio.to_thread(
        rollup_command,
        "void",
        "--org",
        str(org),
        "--request-id",
        "req-8",
        "--reason",
        "x",
        "--dry-run",
    )
    assert "openai/gpt-4o: 1 event(s), 60,000 tokens" in round_dry.stdout, round_dry.stdout
    # An organization never provisioned: one line, no traceback, for both commands
    stranger = str(uuid.uuid4())
    for args in (
        ("statement", "--org", stranger, "--period", month),
        ("void", "--org", stranger, "--request-id", "req-7", "--reason", "dup"),
    ):
        refused = await asyncio.to_thread(rollup_command, *args)
        assert refused.returncode == 2, refused.stderr
        assert "has no usage_limits row" in refused.stderr
        assert "Traceback" not in refused.stderr
