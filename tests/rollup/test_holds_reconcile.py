"""Reconcile of token holds: the reserved counter against the hold rows, and expired holds."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from biz2bricks_core import DatabaseConfig, DatabaseManager, UsageService
from biz2bricks_rollup.__main__ import main as rollup_main
from biz2bricks_rollup.holds_reconcile import find_hold_states, repair_holds
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
