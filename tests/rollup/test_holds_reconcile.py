"""Reconcile of token holds: the reserved counter against the hold rows, and expired holds."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from biz2bricks_core import ConfigurationError, DatabaseConfig, DatabaseManager, UsageService
from biz2bricks_rollup import holds_reconcile
from biz2bricks_rollup.__main__ import main as rollup_main
from biz2bricks_rollup.holds_reconcile import (
    HoldRetention,
    find_hold_states,
    prune_ended_holds,
    repair_holds,
)
from tests.factories import counters, provisioned_org


async def test_drift_and_expired_holds_are_reported_and_repaired(db: DatabaseManager) -> None:
    # Given a live hold, an expired one never swept, and a counter off by 500
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await service.reserve_tokens(org, 3_000)
    await service.reserve_tokens(org, 2_000, ttl_s=0.3)
    await asyncio.sleep(0.6)
    async with db.session() as session:
        await session.execute(
            text("UPDATE usage_limits SET tokens_reserved = 5500 WHERE organization_id = :o"),
            {"o": org},
        )
    # When reconcile looks
    (state,) = [s for s in await find_hold_states(db) if s.organization_id == org]
    # Then it names the drift and the expired hold
    assert (state.reserved, state.live_tokens, state.expired_holds, state.expired_tokens) == (
        5_500,
        5_000,
        1,
        2_000,
    )
    assert state.drifted
    assert "+500" in state.describe()
    assert "1 expired hold(s) of 2000 tokens" in state.describe()
    # And a repair sweeps the expired hold and sets the counter from the live rows
    assert await repair_holds(db, [state]) == 1
    assert [s for s in await find_hold_states(db) if s.organization_id == org] == []
    row = await counters(db, org)
    assert row["tokens_reserved"] == 3_000
    assert row["holds_next_expiry"] is not None
    assert (await service.check_token_limit(org)).reserved == 3_000
    async with db.engine.connect() as conn:
        actions = (
            await conn.execute(
                text("SELECT action FROM audit_logs WHERE organization_id = :o"), {"o": org}
            )
        ).scalars()
        assert "holds.reconcile" in list(actions)


def test_the_reconcile_command_reports_hold_drift(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)

    async def tamper() -> None:
        manager = DatabaseManager(DatabaseConfig(database_url=database_url))
        org = await provisioned_org(manager, plan="free")
        async with manager.session() as session:
            await session.execute(
                text("UPDATE usage_limits SET tokens_reserved = 77 WHERE organization_id = :o"),
                {"o": org},
            )
        await manager.dispose()

    asyncio.run(tamper())
    assert rollup_main(["reconcile", "--fix"]) == 1
    assert "tokens_reserved 77 vs live holds 0 (+77)" in capsys.readouterr().out
    assert rollup_main(["reconcile"]) == 0
    assert "every tokens_reserved equals its live holds" in capsys.readouterr().out


# retention of ended holds


async def _hold_row(
    db: DatabaseManager, org: uuid.UUID, state: str, ended_days_ago: int
) -> uuid.UUID:
    """A hold row that ended (or, 'live', whose ttl ran out) ``ended_days_ago`` days ago."""
    hold, ended = uuid.uuid4(), datetime.now(UTC) - timedelta(days=ended_days_ago)
    async with db.session() as session:
        await session.execute(
            text(
                "INSERT INTO usage_token_holds (id, organization_id, tokens, state, created_at,"
                " expires_at, ended_at) VALUES (:id, :o, 100, :state, :created, :ended, :end)"
            ),
            {
                "id": hold,
                "o": org,
                "state": state,
                "created": ended - timedelta(days=1),
                "ended": ended,
                "end": None if state == "live" else ended,
            },
        )
    return hold


async def _holds_of(db: DatabaseManager, org: uuid.UUID) -> set[uuid.UUID]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id FROM usage_token_holds WHERE organization_id = :o"), {"o": org}
        )
        return set(rows.scalars())


async def test_ended_holds_past_the_retention_are_pruned_in_chunks(
    db: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given released and expired holds ended 31 and 40 days ago, one released yesterday, and
    # a 'live' row whose ttl ran out 60 days ago (it still counts until swept: not ours to drop)
    org = await provisioned_org(db, plan="free")
    old = [
        await _hold_row(db, org, state, days)
        for state, days in [
            ("released", 31),
            ("expired", 40),
            ("released", 35),
            ("expired", 50),
            ("released", 90),
        ]
    ]
    recent = await _hold_row(db, org, "released", 1)
    unswept = await _hold_row(db, org, "live", 60)
    async with db.session() as session:  # counted, as every live row is (no drift)
        await session.execute(
            text(
                "UPDATE usage_limits SET tokens_reserved = 100,"
                " holds_next_expiry = now() - interval '60 days' WHERE organization_id = :o"
            ),
            {"o": org},
        )
    monkeypatch.setattr(holds_reconcile, "PRUNE_CHUNK", 2)
    # When the ended holds older than 30 days are pruned, two rows per transaction
    pruned = await prune_ended_holds(db, 30)
    # Then exactly the old ended holds are gone (others' old holds may go too: count ours)
    assert pruned >= len(old)
    assert await _holds_of(db, org) == {recent, unswept}


def test_the_run_command_prunes_ended_holds_and_reports_it(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ROLLUP_HOLD_RETENTION_DAYS", "7")

    async def given() -> tuple[uuid.UUID, uuid.UUID]:
        manager = DatabaseManager(DatabaseConfig(database_url=database_url))
        try:
            org = await provisioned_org(manager, plan="free")
            old = await _hold_row(manager, org, "expired", 8)
            return old, await _hold_row(manager, org, "released", 6)
        finally:
            await manager.dispose()

    async def ended_holds() -> set[uuid.UUID]:
        manager = DatabaseManager(DatabaseConfig(database_url=database_url))
        try:
            async with manager.engine.connect() as conn:
                rows = await conn.execute(
                    text("SELECT id FROM usage_token_holds WHERE state <> 'live'")
                )
                return set(rows.scalars())
        finally:
            await manager.dispose()

    # Given an expired hold ended 8 days ago and a released one 6 days ago
    old, recent = asyncio.run(given())
    # When the scheduled run rolls up a day with a retention of 7 days
    assert rollup_main(["run", "--date", "2026-01-01"]) == 0
    # Then it pruned the old hold, kept the recent one, and said so
    left = asyncio.run(ended_holds())
    assert old not in left
    assert recent in left
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["holds_pruned"] >= 1


def test_a_malformed_retention_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLUP_HOLD_RETENTION_DAYS", "a month")
    with pytest.raises(ConfigurationError, match="ROLLUP_HOLD_RETENTION_DAYS"):
        HoldRetention()
