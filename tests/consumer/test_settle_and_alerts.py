"""The batch transaction settles holds exactly once and writes threshold alerts exactly once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_core.alerts import CROSSED, crossed_thresholds
from biz2bricks_core.periods import period_bounds
from tests.factories import (
    assert_counter_derivable,
    counters,
    event_count,
    make_event,
    provisioned_org,
    use_tokens,
    write_events,
)


async def hold_states(db: DatabaseManager, org: uuid.UUID) -> dict[uuid.UUID, str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, state FROM usage_token_holds WHERE organization_id = :o"), {"o": org}
        )
        return {r.id: r.state for r in rows}


async def alerts_of(db: DatabaseManager, org: uuid.UUID) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT * FROM usage_alerts WHERE organization_id = :o ORDER BY threshold_pct"),
            {"o": org},
        )
        return [dict(r._mapping) for r in rows]


async def stored_reservation(db: DatabaseManager, event_id: uuid.UUID) -> uuid.UUID | None:
    async with db.engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT reservation_id FROM usage_events WHERE event_id = :e"),
                {"e": event_id},
            )
        ).scalar_one()


# settling holds


async def test_an_event_settles_its_hold_and_counts_its_actual_tokens(db: DatabaseManager) -> None:
    # Given a hold of 5,000 tokens for a call
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    hold = await service.reserve_tokens(org, 5_000)
    # When the call's event (3,000 actual tokens) is written with the hold's id
    event = make_event(
        org, input_tokens=2_500, output_tokens=500, reservation_id=hold.reservation_id
    )
    result = await write_events(db, [event])
    # Then the estimate stops counting and the actual tokens count once
    assert result.holds_settled == 1
    assert await stored_reservation(db, event.event_id) == hold.reservation_id
    assert await hold_states(db, org) == {}  # a settled hold is gone; its event is the record
    row = await counters(db, org)
    assert (row["tokens_used_period"], row["tokens_reserved"]) == (3_000, 0)
    decision = await service.check_token_limit(org)
    assert (decision.used, decision.reserved, decision.remaining) == (3_000, 0, 97_000)
    assert await assert_counter_derivable(db, org) == 3_000


async def test_a_redelivered_event_settles_nothing_twice(db: DatabaseManager) -> None:
    # Given two holds, one settled by an event
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    first = await service.reserve_tokens(org, 4_000)
    second = await service.reserve_tokens(org, 4_000)
    event = make_event(
        org, input_tokens=1_000, output_tokens=0, reservation_id=first.reservation_id
    )
    await write_events(db, [event])
    # When the same event arrives again, and a republished copy names the other hold
    again = await write_events(db, [event, event])
    republished = event.model_copy(update={"reservation_id": second.reservation_id})
    third = await write_events(db, [republished])
    # Then nothing more is settled or counted: the other hold still counts
    assert (again.holds_settled, third.holds_settled) == (0, 0)
    assert (again.inserted, third.inserted) == (0, 0)
    # and the stored event names its hold, so the copy naming another is a conflict, kept
    assert (again.conflicts, third.conflicts) == (0, 1)
    assert "reservation_id: stored" in third.rejected[0].reason
    assert await hold_states(db, org) == {second.reservation_id: "live"}
    row = await counters(db, org)
    assert (row["tokens_used_period"], row["tokens_reserved"]) == (1_000, 4_000)
    assert await assert_counter_derivable(db, org) == 1_000


async def test_in_a_batch_of_new_and_stored_events_only_the_new_ones_settle(
    db: DatabaseManager,
) -> None:
    # Given a stored event, and two live holds
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    stored = make_event(org, input_tokens=1_000, output_tokens=0)
    await write_events(db, [stored])
    other = await service.reserve_tokens(org, 4_000)
    mine = await service.reserve_tokens(org, 3_000)
    # When one batch holds a copy of the stored event naming the other hold, and a new event
    copy = stored.model_copy(update={"reservation_id": other.reservation_id})
    new = make_event(org, input_tokens=2_000, output_tokens=0, reservation_id=mine.reservation_id)
    result = await write_events(db, [copy, new])
    # Then only the new event's hold settles (the copy is a silent duplicate: the stored
    # event recorded no hold, which is "not recorded", as in rows stored before 0006)
    assert (result.inserted, result.holds_settled, result.conflicts) == (1, 1, 0)
    assert await hold_states(db, org) == {other.reservation_id: "live"}
    row = await counters(db, org)
    assert (row["tokens_used_period"], row["tokens_reserved"]) == (3_000, 4_000)
    assert await assert_counter_derivable(db, org) == 3_000


async def test_an_unknown_hold_id_is_ignored_and_the_event_counts(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    hold = await UsageService(db).reserve_tokens(org, 2_000)
    event = make_event(org, input_tokens=700, output_tokens=0, reservation_id=uuid.uuid4())
    result = await write_events(db, [event])
    assert (result.inserted, result.holds_settled) == (1, 0)
    assert await stored_reservation(db, event.event_id) == event.reservation_id
    assert await event_count(db, org) == 1
    assert (await counters(db, org))["tokens_reserved"] == 2_000
    assert await hold_states(db, org) == {hold.reservation_id: "live"}
    assert await assert_counter_derivable(db, org) == 700


async def test_a_hold_of_another_organization_is_not_settled(db: DatabaseManager) -> None:
    org, other = await provisioned_org(db, plan="free"), await provisioned_org(db, plan="free")
    hold = await UsageService(db).reserve_tokens(other, 2_000)
    result = await write_events(db, [make_event(org, reservation_id=hold.reservation_id)])
    assert (result.inserted, result.holds_settled) == (1, 0)
    assert await hold_states(db, other) == {hold.reservation_id: "live"}
    await assert_counter_derivable(db, org)


@pytest.mark.parametrize("ending", ["released", "expired"])
async def test_an_event_of_an_ended_hold_counts_its_tokens_as_usual(
    db: DatabaseManager, ending: str
) -> None:
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    hold = await service.reserve_tokens(org, 2_000, ttl_s=0.3)
    if ending == "released":
        await service.release_tokens(hold.reservation_id)
    else:
        await asyncio.sleep(0.6)
        await service.reserve_tokens(org, 1)  # sweeps the expired hold
    event = make_event(org, input_tokens=1_500, output_tokens=0, reservation_id=hold.reservation_id)
    result = await write_events(db, [event])
    assert (result.inserted, result.holds_settled) == (1, 0)
    assert (await hold_states(db, org))[hold.reservation_id] == ending
    row = await counters(db, org)
    assert row["tokens_used_period"] == 1_500
    assert row["tokens_reserved"] == (0 if ending == "released" else 1)
    await assert_counter_derivable(db, org)


async def test_an_expired_but_unswept_hold_is_settled_once(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    hold = await UsageService(db).reserve_tokens(org, 2_000, ttl_s=0.3)
    await asyncio.sleep(0.6)
    event = make_event(org, input_tokens=1_000, output_tokens=0, reservation_id=hold.reservation_id)
    assert (await write_events(db, [event])).holds_settled == 1
    assert (await write_events(db, [event])).holds_settled == 0
    assert (await counters(db, org))["tokens_reserved"] == 0
    assert await hold_states(db, org) == {}
    await assert_counter_derivable(db, org)


# alerts


@pytest.mark.parametrize(
    ("before", "after", "allowance", "expected"),
    [
        (0, 49_999, 100_000, []),
        (0, 50_000, 100_000, [50]),
        (49_999, 80_000, 100_000, [50, 80]),
        (50_000, 79_999, 100_000, []),
        (79_999, 250_000, 100_000, [80, 100]),
        (0, 10, 0, []),
        (3, 4, 7, [50]),
        (2**61 - 1, 2**61 + 10, 2**62, [50]),  # beyond bigint once multiplied
    ],
)
async def test_the_sql_crossing_rule_agrees_with_python(
    db: DatabaseManager, before: int, after: int, allowance: int, expected: list[int]
) -> None:
    thresholds = [50, 80, 100]
    async with db.driver() as driver:
        in_sql = await driver.fetch(
            f"SELECT pct FROM unnest($4::int[]) AS t(pct),"
            f" (SELECT $1::bigint AS before_tokens, $2::bigint AS after_tokens,"
            f" $3::bigint AS allowance) v WHERE {CROSSED} ORDER BY pct",
            before,
            after,
            allowance,
            thresholds,
        )
    assert [r["pct"] for r in in_sql] == crossed_thresholds(before, after, allowance, thresholds)
    assert crossed_thresholds(before, after, allowance, thresholds) == expected


async def test_each_threshold_crossed_by_usage_writes_one_alert(db: DatabaseManager) -> None:
    # Given a free organization (100k)
    org = await provisioned_org(db, plan="free")
    period_start = period_bounds(datetime.now(UTC))[0]
    # When usage moves to 40k, then 85k (crossing 50 and 80), then 120k (crossing 100)
    await use_tokens(db, org, 40_000)
    assert await alerts_of(db, org) == []
    result = await write_events(db, [make_event(org, input_tokens=45_000, output_tokens=0)])
    assert result.alerts_created == 2
    await use_tokens(db, org, 35_000)
    # Then one row per threshold, with the usage that crossed it
    rows = await alerts_of(db, org)
    assert [(a["threshold_pct"], a["used"], a["allowance"]) for a in rows] == [
        (50, 85_000, 100_000),
        (80, 85_000, 100_000),
        (100, 120_000, 100_000),
    ]
    assert {(a["metric"], a["period_start"], a["published_at"]) for a in rows} == {
        ("tokens", period_start, None)
    }
    assert all(isinstance(a["id"], uuid.UUID) for a in rows)
    await assert_counter_derivable(db, org)


async def test_usage_already_above_a_threshold_does_not_alert_it_again(
    db: DatabaseManager,
) -> None:
    org = await provisioned_org(db, plan="free")
    await use_tokens(db, org, 60_000)
    await use_tokens(db, org, 10_000)
    assert [a["threshold_pct"] for a in await alerts_of(db, org)] == [50]
    await assert_counter_derivable(db, org)


async def test_a_reservation_alone_does_not_alert(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    await use_tokens(db, org, 10_000)
    assert (await UsageService(db).reserve_tokens(org, 85_000)).allowed
    await use_tokens(db, org, 1_000)
    assert await alerts_of(db, org) == []
    await assert_counter_derivable(db, org)


async def test_a_new_period_alerts_again_and_unlimited_plans_never(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    old_start, old_end = period_bounds(datetime.now(UTC) - timedelta(days=40))
    async with db.session() as session:
        await session.execute(
            text(
                "UPDATE usage_limits SET period_start = :s, period_end = :e"
                " WHERE organization_id = :o"
            ),
            {"s": old_start, "e": old_end, "o": org},
        )
    await use_tokens(db, org, 90_000, occurred_at=old_start + timedelta(days=2))
    await use_tokens(db, org, 55_000)  # rolls the period: 0 -> 55k
    periods = [(a["period_start"], a["threshold_pct"]) for a in await alerts_of(db, org)]
    assert sorted(periods) == [
        (old_start, 50),
        (old_start, 80),
        (period_bounds(datetime.now(UTC))[0], 50),
    ]
    await assert_counter_derivable(db, org)
    unlimited = await provisioned_org(db, plan="business")
    await use_tokens(db, unlimited, 50_000_000)
    assert await alerts_of(db, unlimited) == []


@pytest.mark.parametrize(
    ("token_limit", "thresholds", "before", "tokens", "expected"),
    [
        # integers: the common case
        (100_000, [50, 80, 100], 49_000, 32_000, [50, 80]),
        # an allowance beyond 2^53, where pct * allowance leaves bigint: numeric
        (2**62, [50, 80, 100], 2**61 - 5, 10, [50]),
        # a threshold beyond 1000% (and one below it in the same plan)
        (1_000, [999, 1500, 2000], 14_000, 1_000, [1500]),
        # a negative limit (nothing forbids one) far beyond -2^53: no overflow, no alert
        (-(10**16), [50, 1000], 0, 1_000, []),
    ],
)
async def test_thresholds_cross_exactly_with_integer_and_numeric_arithmetic(
    db: DatabaseManager,
    token_limit: int,
    thresholds: list[int],
    before: int,
    tokens: int,
    expected: list[int],
) -> None:
    # Given an organization of a plan with these thresholds and limit, and usage before
    org = await provisioned_org(db, plan="free")
    plan = f"alerts-{uuid.uuid4().hex[:8]}"
    async with db.session() as session:
        await session.execute(
            text(
                "INSERT INTO subscription_plans (name, display_name, monthly_price_usd,"
                " token_limit, alert_thresholds_pct) VALUES (:p, :p, 0, :l, :t)"
            ),
            {"p": plan, "l": token_limit, "t": thresholds},
        )
        await session.execute(
            text(
                "UPDATE usage_limits SET plan = :p, token_limit = :l, tokens_used_period = :u"
                " WHERE organization_id = :o"
            ),
            {"p": plan, "l": token_limit, "u": before, "o": org},
        )
    # When a batch adds tokens
    await write_events(db, [make_event(org, input_tokens=tokens, output_tokens=0)])
    # Then the thresholds crossed are the Python rule's, each with the allowance it measured
    alerts = await alerts_of(db, org)
    assert [a["threshold_pct"] for a in alerts] == expected
    assert crossed_thresholds(before, before + tokens, token_limit, thresholds) == expected
    assert {int(a["allowance"]) for a in alerts} == ({token_limit} if expected else set())


async def test_concurrent_batches_write_each_alert_once(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    events = [make_event(org, input_tokens=1_000, output_tokens=0) for _ in range(120)]
    # The same events in three concurrent writers, in different batch cuts
    await asyncio.gather(
        write_events(db, events[:60]),
        write_events(db, events[30:90]),
        write_events(db, events[60:]),
        write_events(db, events),
    )
    assert [a["threshold_pct"] for a in await alerts_of(db, org)] == [50, 80, 100]
    assert await assert_counter_derivable(db, org) == 120_000
