"""Voids: append-only, idempotent, and every number that depends on the fact agrees."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from biz2bricks_consumer.batching import build_batch
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import DatabaseManager, InvalidArgumentError, UsageService
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.periods import period_bounds
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_rollup.reconcile import find_drift
from biz2bricks_rollup.rollup import run_rollup
from tests.factories import (
    assert_counter_derivable,
    counters,
    event_count,
    make_event,
    message_for,
    provisioned_org,
    write_events,
)


@pytest.fixture
async def writer(db: DatabaseManager) -> BatchWriter:
    book = await load_price_book(db, ModelNames())
    return BatchWriter(db, lambda: book)


async def corrections(db: DatabaseManager, org: uuid.UUID) -> list[Any]:
    async with db.engine.connect() as conn:
        return list(
            await conn.execute(
                text("SELECT * FROM usage_corrections WHERE organization_id = :o ORDER BY id"),
                {"o": org},
            )
        )


async def test_a_void_by_id_keeps_the_event_gives_back_its_usage_and_is_idempotent(
    db: DatabaseManager,
) -> None:
    # Given an organization with three events
    org = await provisioned_org(db)
    service = UsageService(db)
    events = [make_event(org, input_tokens=1_000 * (i + 1), output_tokens=0) for i in range(3)]
    await write_events(db, events)
    before = await counters(db, org)
    # When one is voided by id (with an id of another organization among them)
    result = await service.void_events(
        org,
        event_ids=[events[1].event_id, uuid.uuid4()],
        reason="duplicate recording",
        actor="support@example.com",
    )
    # Then it stays stored, counts nowhere, and a correction row says why and who
    assert (result.voided, result.already_voided, result.not_found) == (1, 0, 1)
    assert result.tokens == 2_000
    assert result.cost_usd > 0
    assert await event_count(db, org) == 3
    after = await counters(db, org)
    assert after["tokens_used_period"] == before["tokens_used_period"] - 2_000
    assert after["cost_usd_period"] == before["cost_usd_period"] - result.cost_usd
    [row] = await corrections(db, org)
    assert (row.kind, row.reason, row.actor, row.counted) == (
        "void",
        "duplicate recording",
        "support@example.com",
        True,
    )
    await assert_counter_derivable(db, org)
    # When it is voided again, nothing changes
    again = await service.void_events(org, event_ids=[events[1].event_id], reason="again")
    assert (again.voided, again.already_voided, again.tokens) == (0, 1, 0)
    assert await counters(db, org) == after
    assert len(await corrections(db, org)) == 1


async def test_a_redelivered_voided_event_is_never_counted_again(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    org = await provisioned_org(db)
    event = make_event(org, request_id="req-1")
    await writer.write(build_batch([message_for(event)]))
    await UsageService(db).void_events(org, request_id="req-1", reason="test traffic")
    result = await writer.write(build_batch([message_for(event)]))
    assert (result.inserted, result.duplicates, result.conflicts) == (0, 1, 0)
    assert (await counters(db, org))["tokens_used_period"] == 0
    await assert_counter_derivable(db, org)


async def test_a_void_by_time_range_and_the_next_rollup_agree(db: DatabaseManager) -> None:
    # Given events yesterday (summarised) and today
    org = await provisioned_org(db)
    yesterday = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(
        days=1
    )
    if yesterday.month != datetime.now(UTC).month:
        yesterday = datetime.now(UTC) - timedelta(minutes=30)  # keep it in the current period
    outage = [make_event(org, occurred_at=yesterday + timedelta(minutes=i)) for i in range(5)]
    fine = [make_event(org, occurred_at=yesterday - timedelta(hours=2))]
    await write_events(db, outage + fine)
    day = yesterday.date()
    await run_rollup(db, [day], wait=True)
    # When the calls of a provider outage are voided by time range
    result = await UsageService(db).void_events(
        org, start=yesterday, end=yesterday + timedelta(minutes=5), reason="provider outage"
    )
    assert result.voided == 5
    await assert_counter_derivable(db, org)
    # Then the next rollup run sees the day as due and its summary leaves them out
    await run_rollup(db, None, wait=True)
    async with db.engine.connect() as conn:
        requests = (
            await conn.execute(
                text(
                    "SELECT sum(request_count) FROM usage_daily_summaries"
                    " WHERE organization_id = :o AND day = :d"
                ),
                {"o": org, "d": day},
            )
        ).scalar_one()
    assert requests == 1
    assert org not in {d.organization_id for d in await find_drift(db)}


async def test_voids_beside_the_consumer_and_reservations_neither_deadlock_nor_drift(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    # Given an organization with usage, and more arriving while voids and holds run
    org = await provisioned_org(db)
    service = UsageService(db)
    first = [make_event(org, request_id=f"r{i}") for i in range(20)]
    await writer.write(build_batch(message_for(e) for e in first))
    arriving = [[make_event(org) for _ in range(20)] for _ in range(5)]
    work: list[Any] = [writer.write(build_batch(message_for(e) for e in b)) for b in arriving]
    work += [service.void_events(org, request_id=f"r{i}", reason="dup") for i in range(20)]
    work += [service.reserve_tokens(org, 10) for _ in range(10)]
    # When they all run at once
    results = await asyncio.gather(*work, return_exceptions=True)
    # Then none failed and the counters equal the non-voided events
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert await assert_counter_derivable(db, org) == 100 * 1_100


async def test_voiding_usage_a_grant_paid_for_gives_the_grant_back_last_paid_first(
    db: DatabaseManager,
) -> None:
    # Given a free organization at its limit, then 30,000 beyond it paid by two grants
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    first = await service.grant_credits(org, 20_000, priority=1, reason="first")
    second = await service.grant_credits(org, 50_000, priority=5, reason="second")
    await write_events(db, [make_event(org, input_tokens=100_000, output_tokens=0)])
    beyond = [make_event(org, input_tokens=15_000, output_tokens=0) for _ in range(2)]
    await write_events(db, beyond)
    grants = {g.reason: g.remaining for g in await service.list_grants(org)}
    assert grants == {"first": 0, "second": 40_000}
    # When one of the beyond-plan calls is voided
    result = await service.void_events(org, event_ids=[beyond[1].event_id], reason="refund")
    # Then the 15,000 go back to the grant paid last in the burn order
    assert result.tokens == 15_000
    grants = {g.reason: g.remaining for g in await service.list_grants(org)}
    assert grants == {"first": 5_000, "second": 50_000}
    limits = await counters(db, org)
    assert (limits["tokens_used_period"], limits["grants_consumed_period"]) == (115_000, 15_000)
    decision = await service.check_token_limit(org)
    assert decision.limit == 100_000 + 15_000 + 55_000
    assert org not in {d.organization_id for d in await find_drift(db)}
    assert first.id != second.id


async def test_voiding_usage_of_an_earlier_period_gives_back_what_grants_paid_in_it(
    db: DatabaseManager,
) -> None:
    # Given a free plan whose usage last period went 500 tokens beyond it, paid by a grant,
    # and a period that has rolled since
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    current, _ = period_bounds(datetime.now(UTC))
    last, _ = period_bounds(current - timedelta(days=1))
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE usage_limits SET period_start = :a, period_end = :b, created_at = :a"
                " WHERE organization_id = :o"
            ),
            {"a": last, "b": current, "o": org},
        )
    grant = await service.grant_credits(org, 10_000, effective_at=last)
    old = make_event(
        org, occurred_at=last + timedelta(days=3), input_tokens=100_500, output_tokens=0
    )
    await write_events(db, [old])
    await write_events(db, [make_event(org, input_tokens=10, output_tokens=0)])
    assert [g.remaining for g in await service.list_grants(org)] == [9_500]
    # When that usage is voided
    await service.void_events(org, event_ids=[old.event_id], reason="test traffic")
    # Then the grant has back what it paid, and last period's statement shows no credits used
    [after] = await service.list_grants(org)
    assert (after.id, after.remaining) == (grant.id, 10_000)
    statement = await service.get_statement(org, last)
    assert (statement.tokens, statement.credits_consumed, statement.overage_tokens) == (0, 0, 0)
    [row] = [r for r in await corrections(db, org) if r.event_id == old.event_id]
    assert (row.counted, row.grants_restored) == (False, 500)
    assert (await counters(db, org))["tokens_used_period"] == 10
    await assert_counter_derivable(db, org)


async def test_void_arguments_are_checked(db: DatabaseManager) -> None:
    org = await provisioned_org(db)
    service = UsageService(db)
    now = datetime.now(UTC)
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        await service.void_events(org, reason="x")
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        await service.void_events(org, request_id="a", event_ids=[uuid.uuid4()], reason="x")
    with pytest.raises(InvalidArgumentError, match="start and end"):
        await service.void_events(org, start=now, reason="x")
    with pytest.raises(InvalidArgumentError, match="reason"):
        await service.void_events(org, request_id="a", reason=" ")
    assert (await service.void_events(org, request_id="none", reason="x")).voided == 0
    assert Decimal(0) == (await service.void_events(org, request_id="none", reason="x")).cost_usd


async def test_an_amendment_moves_usage_to_the_right_organization_and_model(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    # Given a call recorded under the wrong organization and model
    wrong, right = await provisioned_org(db), await provisioned_org(db)
    service = UsageService(db)
    event = make_event(wrong, model="gpt-4o", input_tokens=2_000, output_tokens=500)
    message = message_for(event)
    await writer.write(build_batch([message]))
    # When it is amended
    new_id = await service.amend_event(
        event.event_id,
        reason="billed to the wrong tenant",
        organization_id=right,
        model="gpt-4o-mini",
    )
    # Then the original is voided, the new event priced as the consumer prices and counted
    # where it belongs, and both organizations' counters agree with their events
    assert new_id != event.event_id
    async with db.engine.connect() as conn:
        rows = {
            r.event_id: r
            for r in await conn.execute(
                text("SELECT * FROM usage_events WHERE event_id IN (:a, :b)"),
                {"a": event.event_id, "b": new_id},
            )
        }
    assert rows[event.event_id].voided_at is not None
    amended = rows[new_id]
    assert (amended.organization_id, amended.model, amended.amends) == (
        right,
        "gpt-4o-mini",
        event.event_id,
    )
    assert amended.cost_usd is not None
    assert amended.cost_usd < rows[event.event_id].cost_usd  # the mini model is cheaper
    assert (await counters(db, wrong))["tokens_used_period"] == 0
    assert (await counters(db, right))["tokens_used_period"] == 2_500
    for org in (wrong, right):
        await assert_counter_derivable(db, org)
    [correction] = await corrections(db, wrong)
    assert (correction.kind, correction.new_event_id) == ("amend", new_id)
    # And the original's redelivery changes nothing; a retried amend returns the same id
    result = await writer.write(build_batch([message]))
    assert (result.inserted, result.conflicts) == (0, 0)
    again = await service.amend_event(
        event.event_id, reason="retry", organization_id=right, model="gpt-4o-mini"
    )
    assert again == new_id
    assert (await counters(db, right))["tokens_used_period"] == 2_500
    # The statement of the right organization shows the amended usage
    statement = await service.get_statement(right, period_bounds(datetime.now(UTC))[0])
    assert [(x.model, x.requests) for x in statement.lines] == [("gpt-4o-mini", 1)]
    with pytest.raises(InvalidArgumentError, match="cannot be amended"):
        await service.amend_event(new_id, reason="x", request_id="nope")
    with pytest.raises(InvalidArgumentError, match="voided"):
        await service.amend_event(event.event_id, reason="x", model="gpt-4.1")


async def test_concurrent_amendments_of_one_event_replace_it_once(db: DatabaseManager) -> None:
    # Given an event, and its organization's counter row locked by another transaction, so
    # that every amendment below reads the original before any of them voids it
    org = await provisioned_org(db)
    service = UsageService(db)
    event = make_event(org, input_tokens=1_000, output_tokens=0)
    await write_events(db, [event])
    async with db.driver() as blocker, blocker.transaction():
        await blocker.execute(
            "SELECT 1 FROM usage_limits WHERE organization_id = $1 FOR UPDATE", org
        )
        amends = [
            asyncio.create_task(
                service.amend_event(event.event_id, reason="retried", input_tokens=2_000)
            )
            for _ in range(3)
        ]
        await asyncio.sleep(0.5)
    # When they go on: the first replaces it, the others are retries of that amendment
    ids = await asyncio.gather(*amends)
    assert len(set(ids)) == 1
    assert (await counters(db, org))["tokens_used_period"] == 2_000
    await assert_counter_derivable(db, org)
    assert len(await corrections(db, org)) == 1


async def test_an_amendment_corrects_the_price_context_of_a_call(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    # Given a call sent through the batch API but recorded as a standard one
    org = await provisioned_org(db)
    service = UsageService(db)
    event = make_event(org, model="gpt-4o", input_tokens=2_000, output_tokens=500)
    await writer.write(build_batch([message_for(event)]))
    # When it is amended to its batch context (and retried)
    new_id = await service.amend_event(event.event_id, reason="batch API", processing="batch")
    again = await service.amend_event(event.event_id, reason="retry", processing="batch")
    # Then the replacing event is priced by the batch row, at half the standard cost
    async with db.engine.connect() as conn:
        rows = {
            r.event_id: r
            for r in await conn.execute(
                text("SELECT * FROM usage_events WHERE event_id IN (:a, :b)"),
                {"a": event.event_id, "b": new_id},
            )
        }
    assert again == new_id
    assert rows[new_id].price_variant == "processing=batch"
    assert rows[new_id].cost_usd * 2 == rows[event.event_id].cost_usd
    assert (await counters(db, org))["cost_usd_period"] == rows[new_id].cost_usd
    await assert_counter_derivable(db, org)
