"""query_usage against real PostgreSQL: equal to the raw GROUP BY before and after a rollup run,
with late arrivals after it; summaries used only for days they hold whole."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from biz2bricks_core import DatabaseManager, InvalidArgumentError, UsageService
from biz2bricks_core.usage_query import trusted_days
from biz2bricks_core.usage_windows import DIMENSIONS
from biz2bricks_rollup.rollup import run_rollup
from tests.factories import provisioned_org
from tests.query.usage_data import (
    OPERATIONS,
    USERS,
    Event,
    as_tuples,
    expected,
    insert_events,
    random_events,
    settle_watermarks,
    stored_events,
)

GROUP_BYS = [
    combo for n in range(len(DIMENSIONS) + 1) for combo in itertools.combinations(DIMENSIONS, n)
]
FILTERS: list[dict[str, list[str | None]] | None] = [
    None,
    {"model": ["gpt-4o", "claude-haiku-4-5"]},
    {"user_id": [str(USERS[0]), None], "operation": [OPERATIONS[1], OPERATIONS[2]]},
    {"provider": ["google"], "operation": [None]},
    {"price_variant": ["processing=batch"], "provider": ["openai", "anthropic"]},
]


def three_days() -> tuple[datetime, datetime, datetime]:
    """Midnight UTC two days ago, now, and tomorrow's midnight (the range's end)."""
    now = datetime.now(UTC).replace(microsecond=0)
    today = datetime.combine(now.date(), time.min, tzinfo=UTC)
    return today - timedelta(days=2), now, today + timedelta(days=1)


async def check_all(
    usage: UsageService,
    org: uuid.UUID,
    events: list[Event],
    window: str | None,
    time_zone: str,
    start: datetime,
    end: datetime,
) -> int:
    """Every group-by x filter combination equals the GROUP BY; returns how many were checked."""
    checked = 0
    for group_by, filters in itertools.product(GROUP_BYS, FILTERS):
        rows = await usage.query_usage(
            org,
            start=start,
            end=end,
            window=window,
            group_by=group_by,
            filters=filters,
            time_zone=time_zone,
        )
        want = expected(
            events,
            start=start,
            end=end,
            window=window,
            group_by=group_by,
            filters=filters,
            time_zone=time_zone,
        )
        assert as_tuples(rows, group_by) == want, (window, time_zone, group_by, filters)
        checked += 1
    return checked


@pytest.mark.parametrize(
    ("window", "time_zone"),
    [
        (None, "UTC"),
        ("hour", "UTC"),
        ("hour", "Asia/Kolkata"),
        ("day", "UTC"),
        ("day", "America/New_York"),
        ("month", "UTC"),
        ("month", "Europe/Paris"),
    ],
)
async def test_every_combination_equals_the_group_by_before_and_after_a_rollup(
    db: DatabaseManager, window: str | None, time_zone: str
) -> None:
    # Given three days of random events (some late, some unpriced), today's included
    usage = UsageService(db)
    org = await provisioned_org(db)
    first, now, end = three_days()
    rng = random.Random(f"{window}-{time_zone}")
    await insert_events(db, org, random_events(rng, first, now - timedelta(minutes=1), 400))
    events = await stored_events(db, org)
    # Then before any rollup of these days
    checked = await check_all(usage, org, events, window, time_zone, first, end)
    assert checked == len(GROUP_BYS) * len(FILTERS) == 2 ** len(DIMENSIONS) * 5
    # When the rollup runs for the two past days
    await run_rollup(db, [first.date(), first.date() + timedelta(days=1)], wait=True)
    await settle_watermarks(db)
    async with db.engine.connect() as conn:
        trusted = await trusted_days(conn, org, [first.date()], breakdowns=True)
    assert trusted == [first.date()]
    await check_all(usage, org, events, window, time_zone, first, end)
    # And when late events of the first day and new ones of today arrive after it
    late = random_events(rng, first, first + timedelta(days=1), 20)
    fresh = random_events(rng, now - timedelta(minutes=1), now, 10)
    await insert_events(db, org, late + fresh)
    events = await stored_events(db, org)
    async with db.engine.connect() as conn:
        assert await trusted_days(conn, org, [first.date()], breakdowns=True) == []
    await check_all(usage, org, events, window, time_zone, first, end)
    # And an unaligned range (start and end inside days) too
    start, stop = first + timedelta(hours=7, minutes=13), end - timedelta(hours=3)
    await check_all(usage, org, events, window, time_zone, start, stop)


async def test_the_sum_over_days_equals_a_raw_sql_group_by(db: DatabaseManager) -> None:
    # Given random events, rolled up
    usage = UsageService(db)
    org = await provisioned_org(db)
    first, now, end = three_days()
    await insert_events(db, org, random_events(random.Random(7), first, now, 300))
    await run_rollup(db, [first.date()], wait=True)
    await settle_watermarks(db)
    # When the usage is asked by day and model
    rows = await usage.query_usage(org, start=first, end=end, window="day", group_by=["model"])
    # Then it equals the GROUP BY written in SQL
    async with db.engine.connect() as conn:
        raw = await conn.execute(
            text(
                "SELECT date_trunc('day', occurred_at, 'UTC'), model, count(*), sum(input_tokens),"
                " sum(output_tokens), CASE WHEN count(*) = count(cost_usd) THEN sum(cost_usd) END"
                " FROM usage_events WHERE organization_id = :o AND occurred_at >= :s"
                " AND occurred_at < :e GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            {"o": org, "s": first, "e": end},
        )
        want = [tuple(r) for r in raw]
    got = [
        (r.window_start, r.groups["model"], r.requests, r.input_tokens, r.output_tokens, r.cost_usd)
        for r in rows
    ]
    assert got == want


async def test_an_event_received_after_a_days_rollup_but_not_late_is_counted(
    db: DatabaseManager,
) -> None:
    # Given today rolled up (a manual run), then an event of a minute ago received now:
    # not a late arrival (the index does not have it), yet after the watermark
    usage = UsageService(db)
    org = await provisioned_org(db)
    now = datetime.now(UTC)
    today = datetime.combine(now.date(), time.min, tzinfo=UTC)
    if now - today < timedelta(minutes=20):
        pytest.skip("too close to midnight UTC for a minute-old event of today")
    before = random_events(random.Random(3), today, now - timedelta(minutes=15), 30)
    await insert_events(db, org, before)
    await run_rollup(db, [today.date()], wait=True)
    await settle_watermarks(db)
    async with db.engine.connect() as conn:
        assert await trusted_days(conn, org, [today.date()], breakdowns=False) == [today.date()]
    fresh = random_events(random.Random(4), now - timedelta(minutes=2), now, 3)
    await insert_events(db, org, fresh)
    async with db.engine.connect() as conn:
        assert await trusted_days(conn, org, [today.date()], breakdowns=False) == []
    # When the whole day is asked
    rows = await usage.query_usage(org, start=today, end=today + timedelta(days=1))
    # Then the fresh events count
    assert [r.requests for r in rows] == [len(before) + len(fresh)]


async def test_days_rolled_up_before_breakdowns_existed_are_read_from_events(
    db: DatabaseManager,
) -> None:
    # Given a day rolled up by a run that wrote no breakdowns (before migration 0008)
    usage = UsageService(db)
    org = await provisioned_org(db)
    first, _now, end = three_days()
    await insert_events(
        db, org, random_events(random.Random(11), first, first + timedelta(days=1), 100)
    )
    events = await stored_events(db, org)
    await run_rollup(db, [first.date()], wait=True)
    await settle_watermarks(db)
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE usage_rollup_days SET breakdowns = false WHERE day = :d"),
            {"d": first.date()},
        )
        await conn.execute(
            text("DELETE FROM usage_daily_breakdowns WHERE organization_id = :o"), {"o": org}
        )
    # Then by user it is still exact, and by model it still reads the summaries
    rows = await usage.query_usage(org, start=first, end=end, group_by=["user_id"])
    assert as_tuples(rows, ["user_id"]) == expected(
        events, start=first, end=end, group_by=["user_id"]
    )
    async with db.engine.connect() as conn:
        assert await trusted_days(conn, org, [first.date()], breakdowns=True) == []
        assert await trusted_days(conn, org, [first.date()], breakdowns=False) == [first.date()]


async def test_an_organization_without_events_has_no_rows(db: DatabaseManager) -> None:
    org = await provisioned_org(db)
    first, _, end = three_days()
    assert await UsageService(db).query_usage(org, start=first, end=end, window="day") == []


BAD: list[tuple[dict[str, Any], str]] = [
    ({"window": "week"}, "window"),
    ({"group_by": ["team"]}, "group_by"),
    ({"group_by": "model"}, "group_by"),
    ({"filters": {"team": ["a"]}}, "filters"),
    ({"filters": {"user_id": ["not-a-uuid"]}}, "filters[user_id]"),
    ({"filters": {"model": []}}, "filters[model]"),
    ({"time_zone": "Mars/Olympus"}, "time_zone"),
    ({"start": datetime(2026, 1, 2)}, "start"),
    ({"end": datetime(2025, 1, 1, tzinfo=UTC)}, "end"),
    ({"window": "hour", "end": datetime(2030, 1, 1, tzinfo=UTC)}, "window"),
]


@pytest.mark.parametrize(("change", "named"), BAD)
async def test_a_bad_argument_raises_naming_it(
    db: DatabaseManager, change: dict[str, Any], named: str
) -> None:
    args: dict[str, Any] = {
        "start": datetime(2026, 1, 1, tzinfo=UTC),
        "end": datetime(2026, 1, 3, tzinfo=UTC),
        **change,
    }
    with pytest.raises(
        InvalidArgumentError, match=rf"^{named.replace('[', '.').replace(']', '.')}"
    ):
        await UsageService(db).query_usage(uuid.uuid4(), **args)


async def test_a_void_after_a_days_rollup_is_reflected_at_once(db: DatabaseManager) -> None:
    # Given yesterday rolled up and trusted
    usage = UsageService(db)
    org = await provisioned_org(db)
    yesterday = datetime.combine(datetime.now(UTC).date(), time.min, tzinfo=UTC) - timedelta(days=1)
    events = random_events(random.Random(5), yesterday, yesterday + timedelta(hours=20), 20)
    await insert_events(db, org, events)
    await run_rollup(db, [yesterday.date()], wait=True)
    await settle_watermarks(db)
    async with db.engine.connect() as conn:
        assert await trusted_days(conn, org, [yesterday.date()], breakdowns=False) == [
            yesterday.date()
        ]
    stored = await stored_events(db, org)
    async with db.engine.connect() as conn:
        victims = list(
            (
                await conn.execute(
                    text("SELECT event_id FROM usage_events WHERE organization_id = :o LIMIT 5"),
                    {"o": org},
                )
            ).scalars()
        )
    # When five of its events are voided (no rollup run since)
    await usage.void_events(org, event_ids=victims, reason="test traffic")
    # Then the day is read from its events, without the voided ones
    async with db.engine.connect() as conn:
        assert await trusted_days(conn, org, [yesterday.date()], breakdowns=False) == []
    rows = await usage.query_usage(org, start=yesterday, end=yesterday + timedelta(days=1))
    assert [r.requests for r in rows] == [len(stored) - 5]
    # And after the next rollup run the summaries agree again
    await run_rollup(db, None, wait=True)
    rows = await usage.query_usage(org, start=yesterday, end=yesterday + timedelta(days=1))
    assert [r.requests for r in rows] == [len(stored) - 5]
