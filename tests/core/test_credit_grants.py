"""Credit grants: burn order, instants of start and end, holds, idempotency, reconcile."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

import biz2bricks_rollup.grants as grants_module
from biz2bricks_consumer.batching import build_batch
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import (
    DatabaseManager,
    GrantConflictError,
    InvalidArgumentError,
    UnknownGrantError,
    UnknownOrganizationError,
    UsageService,
)
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.periods import period_bounds
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_rollup.grants import sweep_grants
from biz2bricks_rollup.reconcile import find_drift, repair
from tests.factories import (
    assert_counter_derivable,
    counters,
    make_event,
    message_for,
    provisioned_org,
    use_tokens,
)

FREE_LIMIT = 100_000


@pytest.fixture
async def writer(db: DatabaseManager) -> BatchWriter:
    book = await load_price_book(db, ModelNames())
    return BatchWriter(db, lambda: book)


async def ledger(db: DatabaseManager, org: uuid.UUID) -> list[tuple[str, int]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT kind, tokens FROM credit_ledger WHERE organization_id = :o ORDER BY id"),
            {"o": org},
        )
        return [(r.kind, int(r.tokens)) for r in rows]


async def remaining_by_reason(service: UsageService, org: uuid.UUID) -> dict[str | None, int]:
    return {g.reason: g.remaining for g in await service.list_grants(org, include_ended=True)}


async def test_usage_beyond_the_plan_burns_grants_in_order_across_batches_and_replicas(
    db: DatabaseManager,
) -> None:
    # Given a free organization at its plan's limit with three grants
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    now = datetime.now(UTC)
    await service.grant_credits(org, 50_000, reason="purchased")  # priority 10, no expiry
    await service.grant_credits(
        org, 20_000, expires_at=now + timedelta(days=10), reason="promo"
    )  # priority 10, expires first
    await service.grant_credits(
        org, 30_000, priority=5, expires_at=now + timedelta(days=30), reason="goodwill"
    )
    await use_tokens(db, org, FREE_LIMIT)
    assert await ledger(db, org) == [("grant", 50_000), ("grant", 20_000), ("grant", 30_000)]
    book = await load_price_book(db, ModelNames())
    replicas = [BatchWriter(db, lambda: book), BatchWriter(db, lambda: book)]

    def beyond(tokens: int) -> list:  # type: ignore[type-arg]
        return [message_for(make_event(org, input_tokens=tokens, output_tokens=0))]

    # When 25,000 tokens go beyond the plan, and the same batch is delivered again
    first = beyond(25_000)
    result = await replicas[0].write(build_batch(first))
    await replicas[1].write(build_batch(first))
    # Then the lowest priority pays them, once
    assert result.grants_consumed == 25_000
    assert await remaining_by_reason(service, org) == {
        "purchased": 50_000,
        "promo": 20_000,
        "goodwill": 5_000,
    }
    # When two replicas write two batches at once, each also redelivering the other's
    a, b = beyond(10_000), beyond(10_000)
    await asyncio.gather(
        replicas[0].write(build_batch(a + b)), replicas[1].write(build_batch(b + a))
    )
    # Then the goodwill grant is used up and the earliest expiry pays the rest
    assert await remaining_by_reason(service, org) == {
        "purchased": 50_000,
        "promo": 5_000,
        "goodwill": 0,
    }
    # When 20,000 more arrive, the grant without expiry pays what the promo cannot
    await replicas[1].write(build_batch(beyond(20_000)))
    assert await remaining_by_reason(service, org) == {
        "purchased": 35_000,
        "promo": 0,
        "goodwill": 0,
    }
    # And every number agrees: 65,000 consumed, the allowance unchanged by the burn
    limits = await counters(db, org)
    assert limits["grants_consumed_period"] == 65_000
    decision = await service.check_token_limit(org)
    assert (decision.used, decision.limit, decision.remaining) == (165_000, 200_000, 35_000)
    usage = await service.get_usage(org)
    assert (usage.credits_remaining, usage.grants_consumed_period) == (35_000, 65_000)
    # The batches paid from the cache: what the grants owe is not in the ledger yet, and
    # reconcile counts it (ledger + owed = consumed)
    consumed = sum(t for kind, t in await ledger(db, org) if kind == "consume")
    assert consumed + limits["grants_pending"] == 65_000
    assert org not in {d.organization_id for d in await find_drift(db)}
    # When the rollup tidies the grants, the ledger holds each grant's consumption and
    # nothing is owed; no number moves
    await sweep_grants(db)
    # (one row per grant for what it paid since the last tidy: goodwill, promo, purchased)
    assert sorted(t for kind, t in await ledger(db, org) if kind == "consume") == [
        15_000,
        20_000,
        30_000,
    ]
    assert (await counters(db, org))["grants_pending"] == 0
    assert await remaining_by_reason(service, org) == {
        "purchased": 35_000,
        "promo": 0,
        "goodwill": 0,
    }
    decision = await service.check_token_limit(org)
    assert (decision.used, decision.limit, decision.remaining) == (165_000, 200_000, 35_000)
    assert org not in {d.organization_id for d in await find_drift(db)}
    await assert_counter_derivable(db, org)


async def test_usage_within_the_plan_and_unlimited_plans_consume_nothing(
    db: DatabaseManager,
) -> None:
    service = UsageService(db)
    limited, unlimited = await provisioned_org(db, "free"), await provisioned_org(db, "business")
    for org in (limited, unlimited):
        await service.grant_credits(org, 10_000)
    await use_tokens(db, limited, FREE_LIMIT)
    await use_tokens(db, unlimited, 10_000_000)
    for org in (limited, unlimited):
        assert [g.remaining for g in await service.list_grants(org)] == [10_000]
        assert (await counters(db, org))["grants_consumed_period"] == 0


async def test_a_grant_counts_until_the_instant_it_expires_with_nothing_run_between(
    db: DatabaseManager,
) -> None:
    # Given an organization at its plan's limit and a grant that expires in two seconds
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await use_tokens(db, org, FREE_LIMIT)
    expires = datetime.now(UTC) + timedelta(seconds=2)
    await service.grant_credits(org, 10_000, expires_at=expires, reason="trial")
    # Then before it expires, checks and holds may use it
    assert (await service.check_token_limit(org, estimated_tokens=8_000)).allowed
    hold = await service.reserve_tokens(org, 8_000)
    assert hold.allowed
    assert hold.limit == FREE_LIMIT + 10_000
    await service.release_tokens(hold.reservation_id)
    # When it expires, with no job run in between
    await asyncio.sleep(max((expires - datetime.now(UTC)).total_seconds(), 0) + 0.2)
    # Then both refuse, and its unused tokens show as expired in this period
    decision = await service.check_token_limit(org, estimated_tokens=8_000)
    assert (decision.allowed, decision.limit) == (False, FREE_LIMIT)
    assert not (await service.reserve_tokens(org, 8_000)).allowed
    usage = await service.get_usage(org)
    assert (usage.credits_remaining, usage.grants_expired_period) == (0, 10_000)
    assert await service.list_grants(org) == []
    [ended] = await service.list_grants(org, include_ended=True)
    assert (ended.reason, ended.remaining) == ("trial", 0)
    # And the rollup's sweep records the breakage once
    assert await sweep_grants(db) >= 10_000
    await sweep_grants(db)
    assert [e for e in await ledger(db, org) if e[0] == "expire"] == [("expire", 10_000)]
    assert org not in {d.organization_id for d in await find_drift(db)}


async def test_a_grant_effective_in_the_future_counts_from_that_instant(
    db: DatabaseManager,
) -> None:
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await use_tokens(db, org, FREE_LIMIT)
    starts = datetime.now(UTC) + timedelta(seconds=2)
    grant = await service.grant_credits(org, 5_000, effective_at=starts)
    assert grant.effective_at == starts
    assert not (await service.check_token_limit(org, estimated_tokens=1_000)).allowed
    assert not (await service.reserve_tokens(org, 1_000)).allowed
    await asyncio.sleep(max((starts - datetime.now(UTC)).total_seconds(), 0) + 0.2)
    assert (await service.check_token_limit(org, estimated_tokens=1_000)).allowed
    hold = await service.reserve_tokens(org, 5_000)
    assert (hold.allowed, hold.limit, hold.remaining) == (True, FREE_LIMIT + 5_000, 0)


async def test_concurrent_reservations_against_plan_and_grants_allow_exactly_what_fits(
    db: DatabaseManager,
) -> None:
    # Given a free organization that used 90,000 and two grants: 60,000 tokens left
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await use_tokens(db, org, 90_000)
    await service.grant_credits(org, 30_000, priority=1)
    await service.grant_credits(org, 20_000, expires_at=datetime.now(UTC) + timedelta(days=1))
    # When 200 callers reserve 500 tokens each at once
    holds = await asyncio.gather(*(service.reserve_tokens(org, 500) for _ in range(200)))
    # Then exactly the 120 that fit are allowed
    allowed = [h for h in holds if h.allowed]
    assert len(allowed) == 120
    assert max(h.reserved for h in allowed) == 60_000
    assert (await counters(db, org))["tokens_reserved"] == 60_000


async def test_grant_ids_make_granting_idempotent_and_conflicts_loud(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    grant_id = uuid.uuid4()
    first = await service.grant_credits(org, 1_000, grant_id=grant_id, reason="invoice 7")
    again = await service.grant_credits(org, 1_000, grant_id=grant_id, reason="invoice 7")
    assert again == first
    with pytest.raises(GrantConflictError, match="tokens: stored 1000, requested 2000"):
        await service.grant_credits(org, 2_000, grant_id=grant_id, reason="invoice 7")
    other = await provisioned_org(db, plan="free")
    with pytest.raises(GrantConflictError, match="organization_id"):
        await service.grant_credits(other, 1_000, grant_id=grant_id, reason="invoice 7")
    assert len(await service.list_grants(org)) == 1
    assert [k for k, _ in await ledger(db, org)] == ["grant"]


async def test_a_void_ends_a_grant_now_and_is_idempotent(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await use_tokens(db, org, FREE_LIMIT + 4_000)  # beyond the plan before any grant
    grant = await service.grant_credits(org, 10_000)
    await use_tokens(db, org, 3_000)  # burns 3,000
    voided = await service.void_grant(grant.id, reason="chargeback")
    assert (voided.remaining, voided.voided_at is not None) == (0, True)
    assert await service.void_grant(grant.id) == voided
    # What it paid stays paid; nothing else counts
    decision = await service.check_token_limit(org)
    assert decision.limit == FREE_LIMIT + 3_000
    assert await ledger(db, org) == [("grant", 10_000), ("consume", 3_000), ("void", 7_000)]
    async with db.engine.connect() as conn:
        actions = (
            await conn.execute(
                text("SELECT action FROM audit_logs WHERE organization_id = :o"), {"o": org}
            )
        ).scalars()
        assert {"credits.grant", "credits.void"} <= set(actions)
    with pytest.raises(UnknownGrantError):
        await service.void_grant(uuid.uuid4())


async def test_grant_arguments_are_checked(db: DatabaseManager) -> None:
    org = await provisioned_org(db)
    service = UsageService(db)
    now = datetime.now(UTC)
    with pytest.raises(InvalidArgumentError, match="tokens"):
        await service.grant_credits(org, 0)
    with pytest.raises(InvalidArgumentError, match="expires_at"):
        await service.grant_credits(org, 1, expires_at=now - timedelta(seconds=1))
    with pytest.raises(InvalidArgumentError, match="timezone-aware"):
        await service.grant_credits(org, 1, expires_at=datetime(2030, 1, 1))
    with pytest.raises(UnknownOrganizationError):
        await service.grant_credits(uuid.uuid4(), 1)
    with pytest.raises(UnknownOrganizationError):
        await service.list_grants(uuid.uuid4())


async def test_reconcile_finds_and_repairs_drift_between_ledger_and_counters(
    db: DatabaseManager,
) -> None:
    # Given grants burned by real usage, then counters changed behind the pipeline's back
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await service.grant_credits(org, 10_000)
    await use_tokens(db, org, FREE_LIMIT + 2_500)
    async with db.session() as session:
        await session.execute(
            text(
                "UPDATE usage_limits SET grants_consumed_period = 9, grants_remaining = 1"
                " WHERE organization_id = :o"
            ),
            {"o": org},
        )
    # When reconcile looks
    [drift] = [d for d in await find_drift(db) if d.organization_id == org]
    # Then it names both numbers and repairs them from the ledger and the grant rows
    assert (drift.grants_consumed, drift.expected_grants_consumed) == (9, 2_500)
    assert (drift.grants_remaining, drift.expected_grants_remaining) == (1, 7_500)
    assert "grants consumed 9 vs ledger 2500" in drift.describe()
    await repair(db, [drift])
    assert org not in {d.organization_id for d in await find_drift(db)}
    limits = await counters(db, org)
    assert (limits["grants_consumed_period"], limits["grants_remaining"]) == (2_500, 7_500)


async def ledger_rows(db: DatabaseManager, org: uuid.UUID) -> list[tuple[str, int, object]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT kind, tokens, period_start FROM credit_ledger"
                " WHERE organization_id = :o AND kind <> 'grant' ORDER BY id"
            ),
            {"o": org},
        )
        return [(r.kind, int(r.tokens), r.period_start) for r in rows]


async def test_tokens_paid_from_the_cache_are_owed_by_the_grants_live_then_through_an_expiry(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    # Given an organization at its plan's limit, a first-priority grant that expires in two
    # seconds and a grant without expiry
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await use_tokens(db, org, FREE_LIMIT)
    expires = datetime.now(UTC) + timedelta(seconds=2)
    await service.grant_credits(org, 10_000, priority=5, expires_at=expires, reason="short")
    await service.grant_credits(org, 50_000, reason="long")
    period = (await counters(db, org))["period_start"]

    def beyond(tokens: int) -> list:  # type: ignore[type-arg]
        return [message_for(make_event(org, input_tokens=tokens, output_tokens=0))]

    # When 6,000 tokens go beyond the plan
    result = await writer.write(build_batch(beyond(6_000)))
    # Then the batch paid them from the cache: the expiring grant owes them, and every reader
    # already sees them taken from it
    limits = await counters(db, org)
    assert result.grants_consumed == 6_000
    assert (limits["grants_pending"], limits["grants_consumed_period"]) == (6_000, 6_000)
    assert await ledger_rows(db, org) == []
    assert await remaining_by_reason(service, org) == {"short": 4_000, "long": 50_000}
    decision = await service.check_token_limit(org)
    assert (decision.limit, decision.remaining) == (FREE_LIMIT + 60_000, 54_000)
    # When the grant expires, with nothing run in between
    await asyncio.sleep(max((expires - datetime.now(UTC)).total_seconds(), 0) + 0.2)
    # Then it stops counting at once, and what it expires with is what it did not pay
    decision = await service.check_token_limit(org)
    assert (decision.limit, decision.remaining) == (FREE_LIMIT + 56_000, 50_000)
    assert not (await service.reserve_tokens(org, 50_001)).allowed
    usage = await service.get_usage(org)
    assert (usage.credits_remaining, usage.grants_expired_period) == (50_000, 4_000)
    # When 3,000 more go beyond the plan, the cache is stale: the rows pay, after the expired
    # grant gave what it owed and its breakage was recorded
    result = await writer.write(build_batch(beyond(3_000)))
    assert result.grants_consumed == 3_000
    assert await remaining_by_reason(service, org) == {"short": 0, "long": 47_000}
    # And the ledger holds each of them once, also after the sweep; every number agrees
    await sweep_grants(db)
    assert await ledger_rows(db, org) == [
        ("consume", 6_000, period),
        ("expire", 4_000, period),
        ("consume", 3_000, period),
    ]
    limits = await counters(db, org)
    assert (limits["grants_pending"], limits["grants_consumed_period"]) == (0, 9_000)
    assert org not in {d.organization_id for d in await find_drift(db)}
    await assert_counter_derivable(db, org)


async def test_owed_tokens_of_an_earlier_period_are_booked_to_it_when_the_period_rolls(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    # Given an organization whose grants owe 5,000 tokens paid from the cache last period
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await use_tokens(db, org, FREE_LIMIT)
    await service.grant_credits(org, 50_000, reason="purchased")
    await use_tokens(db, org, 5_000)
    async with db.driver() as conn:
        await conn.execute(
            "UPDATE usage_limits SET period_start = period_start - interval '1 month',"
            " period_end = period_start, grants_pending_period = period_start"
            " - interval '1 month' WHERE organization_id = $1",
            org,
        )
    before = await counters(db, org)
    assert before["grants_pending"] == 5_000
    last_period = before["period_start"]
    # When this period's usage goes 2,000 beyond the plan (the batch rolls the period)
    await use_tokens(db, org, FREE_LIMIT + 2_000)
    # Then the owed tokens are booked to the period they were paid in, the new ones to this one
    limits = await counters(db, org)
    assert limits["period_start"] > last_period
    assert (limits["grants_pending"], limits["grants_consumed_period"]) == (0, 2_000)
    assert await ledger_rows(db, org) == [
        ("consume", 5_000, last_period),
        ("consume", 2_000, limits["period_start"]),
    ]
    assert await remaining_by_reason(service, org) == {"purchased": 43_000}
    # And the next batch pays from the cache again
    await use_tokens(db, org, 1_000)
    limits = await counters(db, org)
    assert (limits["grants_pending"], limits["grants_consumed_period"]) == (1_000, 3_000)
    assert (await service.check_token_limit(org)).remaining == 42_000


async def test_the_sweep_ends_while_consumers_keep_organizations_owing(
    db: DatabaseManager,
) -> None:
    # Given five organizations past their plan whose grants owe tokens paid from the cache
    service = UsageService(db)
    orgs = sorted([await provisioned_org(db, plan="free") for _ in range(5)])
    for org in orgs:
        await use_tokens(db, org, FREE_LIMIT)
        await service.grant_credits(org, 50_000)
        await use_tokens(db, org, 1_000)
    # When the sweep runs two at a time, and after each chunk a consumer makes every
    # organization swept before it owe again
    real_refresh = grants_module.refresh_grants
    chunks: list[list[uuid.UUID]] = []

    async def refresh_then_usage(conn: Any, due: list[uuid.UUID]) -> list[Any]:
        rows = await real_refresh(conn, due)
        chunks.append(list(due))
        for org in [o for o in orgs if o < due[0]]:
            await use_tokens(db, org, 10)
        return rows

    grants_module.refresh_grants = refresh_then_usage  # type: ignore[assignment]
    try:
        await asyncio.wait_for(sweep_grants(db, chunk=2), timeout=60)
    finally:
        grants_module.refresh_grants = real_refresh  # type: ignore[assignment]
    # Then it ended after one pass over the organizations (each chunk after the last)
    assert [o for c in chunks for o in c if o in orgs] == orgs
    # And the next sweep takes what they owe since; nothing drifts
    await sweep_grants(db, chunk=2)
    for org in orgs:
        assert (await counters(db, org))["grants_pending"] == 0
    assert not {d.organization_id for d in await find_drift(db)} & set(orgs)


async def test_get_usage_after_the_period_ended_without_events_shows_the_new_period(
    db: DatabaseManager,
) -> None:
    # Given an organization whose counters still stand for last period (no event since it
    # ended), with usage there and a grant that expired in it
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await use_tokens(db, org, 5_000)
    await service.grant_credits(
        org, 3_000, expires_at=datetime.now(UTC) + timedelta(seconds=1), reason="trial"
    )
    await asyncio.sleep(1.2)
    async with db.driver() as conn:
        await conn.execute(
            "UPDATE usage_limits SET period_start = period_start - interval '1 month',"
            " period_end = period_start WHERE organization_id = $1",
            org,
        )
        await conn.execute(
            "UPDATE credit_grants SET expires_at = expires_at - interval '1 month',"
            " effective_at = effective_at - interval '1 month' WHERE organization_id = $1",
            org,
        )
    # When its usage is read
    usage = await service.get_usage(org)
    # Then it is this period's: its bounds, nothing used, nothing expired in it yet
    start, end = period_bounds(datetime.now(UTC))
    assert (usage.period_start, usage.period_end) == (start, end)
    assert (usage.tokens_used_period, usage.grants_expired_period) == (0, 0)
