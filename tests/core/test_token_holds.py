"""Token holds against real PostgreSQL: atomic reservations, release, expiry, periods, outages."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from biz2bricks_core import (
    DatabaseConfig,
    DatabaseManager,
    DatabaseUnavailableError,
    InvalidArgumentError,
    TokenHold,
    UnknownOrganizationError,
    UsageService,
    UsageServiceSettings,
)
from biz2bricks_core.allowance import token_reason
from biz2bricks_core.holds import FUNCTION_BODIES
from biz2bricks_core.periods import period_bounds
from tests.factories import assert_counter_derivable, counters, provisioned_org, use_tokens


async def set_limits(db: DatabaseManager, org: uuid.UUID, **values: object) -> None:
    assignments = ", ".join(f"{k} = :{k}" for k in values)
    async with db.session() as session:
        await session.execute(
            text(f"UPDATE usage_limits SET {assignments} WHERE organization_id = :org"),
            {**values, "org": org},
        )


async def holds_of(db: DatabaseManager, org: uuid.UUID) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT * FROM usage_token_holds WHERE organization_id = :o ORDER BY created_at"),
            {"o": org},
        )
        return [dict(r._mapping) for r in rows]


async def assert_reserved_is_live_sum(db: DatabaseManager, org: uuid.UUID) -> int:
    """The holds invariant: tokens_reserved equals the sum of the live hold rows."""
    row = await counters(db, org)
    live = sum(h["tokens"] for h in await holds_of(db, org) if h["state"] == "live")
    assert row["tokens_reserved"] == live
    return live


async def test_200_concurrent_reservations_grant_exactly_what_remains(db: DatabaseManager) -> None:
    # Given a free organization (100k) with 50,000 remaining
    org = await provisioned_org(db, plan="free")
    await use_tokens(db, org, 50_000)
    service = UsageService(db)
    # When 200 calls reserve 1,000 tokens each at once
    holds = await asyncio.gather(*(service.reserve_tokens(org, 1_000) for _ in range(200)))
    # Then exactly 50 are allowed, each with its own hold, and the rest changed nothing
    allowed = [h for h in holds if h.allowed]
    assert len(allowed) == 50
    assert len({h.reservation_id for h in allowed}) == 50
    refused = [h for h in holds if not h.allowed]
    assert {h.reason for h in refused} == {"token_limit_exceeded"}
    assert all(h.reservation_id is None and h.remaining == 0 for h in refused)
    assert await assert_reserved_is_live_sum(db, org) == 50_000
    decision = await service.check_token_limit(org)
    assert (decision.used, decision.reserved, decision.remaining) == (50_000, 50_000, 0)
    assert not (await service.check_token_limit(org, estimated_tokens=1)).allowed
    assert await assert_counter_derivable(db, org) == 50_000


async def test_a_hold_reports_the_org_totals_and_an_aware_expiry(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    await use_tokens(db, org, 10_000)
    service = UsageService(db)
    first = await service.reserve_tokens(org, 2_000)
    hold = await service.reserve_tokens(org, 3_000, ttl_s=60)
    assert isinstance(hold, TokenHold)
    assert isinstance(hold.reservation_id, uuid.UUID)
    assert (hold.allowed, hold.reason) == (True, "ok")
    assert (hold.used, hold.reserved, hold.limit, hold.remaining) == (
        10_000,
        5_000,
        100_000,
        85_000,
    )
    assert hold.expires_at is not None
    assert hold.expires_at.utcoffset() == timedelta(0)
    assert timedelta(seconds=50) < hold.expires_at - datetime.now(UTC) <= timedelta(seconds=60)
    assert first.expires_at is not None
    assert first.expires_at - datetime.now(UTC) > timedelta(seconds=800)  # USAGE_HOLD_TTL_S 900
    assert hold.period_end == first.period_end == (await counters(db, org))["period_end"]
    await assert_counter_derivable(db, org)


async def test_release_returns_the_estimate_and_is_idempotent(db: DatabaseManager) -> None:
    # Given an organization with 1,000 tokens left, all of them held
    org = await provisioned_org(db, plan="free")
    await use_tokens(db, org, 99_000)
    service = UsageService(db)
    hold = await service.reserve_tokens(org, 1_000)
    assert hold.allowed
    assert not (await service.reserve_tokens(org, 1)).allowed
    # When the call fails and the hold is released, twice
    await service.release_tokens(hold.reservation_id)
    await service.release_tokens(hold.reservation_id)
    # Then the tokens are free again, once
    assert await assert_reserved_is_live_sum(db, org) == 0
    assert [h["state"] for h in await holds_of(db, org)] == ["released"]
    assert (await service.reserve_tokens(org, 1_000)).allowed
    assert not (await service.reserve_tokens(org, 1)).allowed
    # And an unknown id or None is a no-op
    await service.release_tokens(uuid.uuid4())
    await service.release_tokens(None)
    assert await assert_reserved_is_live_sum(db, org) == 1_000
    await assert_counter_derivable(db, org)


async def test_an_expired_hold_stops_counting_and_is_swept_and_counted(
    db: DatabaseManager,
) -> None:
    # Given a hold of the whole remaining allowance with a short ttl
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    hold = await service.reserve_tokens(org, 100_000, ttl_s=0.5)
    assert hold.allowed
    assert not (await service.check_token_limit(org, estimated_tokens=1)).allowed
    # When its ttl passes without an event or a release
    await asyncio.sleep(1.0)
    # Then checks no longer count it, without any job having run
    decision = await service.check_token_limit(org, estimated_tokens=100_000)
    assert (decision.allowed, decision.reserved) == (True, 0)
    # And the next reservation sweeps it (state expired, counted in the metric)
    again = await service.reserve_tokens(org, 60_000)
    assert (again.allowed, again.reserved) == (True, 60_000)
    assert service.counters["token_holds_expired"] == 1
    states = [h["state"] for h in await holds_of(db, org)]
    assert states == ["expired", "live"]
    assert await assert_reserved_is_live_sum(db, org) == 60_000


async def test_a_refused_reservation_still_sweeps_expired_holds(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await service.reserve_tokens(org, 30_000, ttl_s=0.3)
    await asyncio.sleep(0.6)
    refused = await service.reserve_tokens(org, 100_001)
    assert (refused.allowed, refused.reserved, refused.reason) == (
        False,
        0,
        "token_limit_exceeded",
    )
    assert service.counters["token_holds_expired"] == 1
    assert await assert_reserved_is_live_sum(db, org) == 0


async def test_a_refusal_changes_nothing(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    await use_tokens(db, org, 99_500)
    before = await counters(db, org)
    refused = await UsageService(db).reserve_tokens(org, 501)
    assert (refused.allowed, refused.reservation_id, refused.remaining) == (False, None, 500)
    assert refused.period_end == before["period_end"]  # when it may be asked again
    assert await holds_of(db, org) == []
    after = await counters(db, org)
    assert (after["tokens_reserved"], after["holds_next_expiry"]) == (
        before["tokens_reserved"],
        before["holds_next_expiry"],
    )
    await assert_counter_derivable(db, org)


async def test_a_period_that_has_ended_counts_as_empty_for_holds(db: DatabaseManager) -> None:
    # Given last period's counter at the limit, not yet rolled by any event
    org = await provisioned_org(db, plan="free")
    start, end = period_bounds(datetime.now(UTC) - timedelta(days=40))
    await set_limits(db, org, period_start=start, period_end=end)
    await use_tokens(db, org, 100_000, occurred_at=start + timedelta(days=3))
    assert await assert_counter_derivable(db, org) == 100_000
    service = UsageService(db)
    # Then a reservation sees an empty period, and its hold still counts
    hold = await service.reserve_tokens(org, 70_000)
    assert (hold.allowed, hold.used, hold.reserved) == (True, 0, 70_000)
    assert not (await service.reserve_tokens(org, 30_001)).allowed
    decision = await service.check_token_limit(org)
    assert (decision.used, decision.reserved, decision.remaining) == (0, 70_000, 30_000)
    await assert_counter_derivable(db, org)


async def test_soft_limits_allow_with_a_reason_and_hold(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="pro")
    await use_tokens(db, org, 20_000_000)
    hold = await UsageService(db).reserve_tokens(org, 5_000)
    assert (hold.allowed, hold.reason, hold.remaining) == (True, "soft_limit_exceeded", 0)
    assert hold.reservation_id is not None
    assert await assert_reserved_is_live_sum(db, org) == 5_000
    await assert_counter_derivable(db, org)


async def test_unlimited_plans_are_allowed_without_a_hold(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="business")
    hold = await UsageService(db).reserve_tokens(org, 10**9)
    assert (hold.allowed, hold.reason, hold.limit, hold.remaining) == (
        True,
        "unlimited",
        None,
        None,
    )
    assert hold.reservation_id is None
    assert await holds_of(db, org) == []


async def test_credits_extend_what_can_be_held(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    assert not (await service.reserve_tokens(org, 120_000)).allowed
    await service.grant_credits(org, 20_000)
    hold = await service.reserve_tokens(org, 120_000)
    assert (hold.allowed, hold.limit, hold.remaining) == (True, 120_000, 0)


async def test_bad_arguments_and_unknown_organizations_raise(db: DatabaseManager) -> None:
    org = await provisioned_org(db)
    service = UsageService(db)
    with pytest.raises(InvalidArgumentError, match="estimated_tokens"):
        await service.reserve_tokens(org, -1)
    with pytest.raises(InvalidArgumentError, match="ttl_s"):
        await service.reserve_tokens(org, 1, ttl_s=0)
    with pytest.raises(InvalidArgumentError, match="reservation_id"):
        await service.release_tokens("nope")
    with pytest.raises(UnknownOrganizationError):
        await service.reserve_tokens(uuid.uuid4(), 1)


async def test_database_down_applies_the_token_check_setting() -> None:
    down = DatabaseManager(
        DatabaseConfig(database_url="postgresql://x@127.0.0.1:1/none", db_pool_timeout_s=1)
    )
    try:
        service = UsageService(down)
        hold = await service.reserve_tokens(uuid.uuid4(), 1_000)
        assert (hold.allowed, hold.reason, hold.reservation_id) == (
            True,
            "database_unavailable_fail_open",
            None,
        )
        assert service.counters["token_fail_open"] == 1
        strict = UsageService(down, UsageServiceSettings(token_check_fail_open=False))
        closed = await strict.reserve_tokens(uuid.uuid4(), 1_000)
        assert (closed.allowed, closed.reason) == (False, "database_unavailable_fail_closed")
        with pytest.raises(DatabaseUnavailableError):
            await service.release_tokens(uuid.uuid4())
    finally:
        await down.dispose()


# one rule, one owner: the Python rule and its SQL twin agree; the database runs this module

RULE_CASES = [
    (0, 0, 0, None, False),
    (10, 5, 85, 100, False),
    (10, 5, 86, 100, False),
    (10, 5, 86, 100, True),
    (0, 0, 1, 0, False),
    (100, 0, 0, 100, False),
    (101, 0, 0, 100, True),
    (0, 100, 0, 100, False),
    (0, 101, 0, 100, False),
]


async def test_the_sql_token_rule_agrees_with_python(db: DatabaseManager) -> None:
    async with db.driver() as driver:
        for used, reserved, estimate, allowance, soft in RULE_CASES:
            in_sql = await driver.fetchval(
                "SELECT usage_token_reason($1, $2, $3, $4, $5)",
                used,
                reserved,
                estimate,
                allowance,
                soft,
            )
            assert in_sql == token_reason(used, reserved, estimate, allowance, soft)


async def test_the_database_runs_the_functions_of_biz2bricks_core_holds(
    db: DatabaseManager,
) -> None:
    async with db.driver() as driver:
        for name, body in FUNCTION_BODIES.items():
            assert await driver.fetchval("SELECT prosrc FROM pg_proc WHERE proname = $1", name) == (
                body
            ), f"{name}: migrations and biz2bricks_core.holds differ; add a migration"
