"""Every billing rule's SQL twin equals its Python twin on the same cases, and the writers of
the counter rows in different modules lock them in one order (no deadlock between them)."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from biz2bricks_consumer.batching import build_batch
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import DatabaseManager
from biz2bricks_core.allowance import (
    allowance,
    allowance_sql,
    remaining,
    remaining_sql,
    token_reason,
)
from biz2bricks_core.counters import lock_counters_sql, lock_order
from biz2bricks_core.counting import (
    event_tokens,
    event_tokens_sql,
    is_unpriced,
    unpriced_count_sql,
    unpriced_sql,
)
from biz2bricks_core.credits import (
    BURN,
    REFRESH_GRANTS,
    GrantState,
    beyond_plan,
    beyond_plan_sql,
    burn,
    grant_is_live,
    grant_is_live_sql,
    grants_owing_sql,
    live_grants_remaining_sql,
    owed,
)
from biz2bricks_core.holds import reserved_after_settle, reserved_after_settle_sql
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.periods import (
    counter_after_roll,
    counter_after_roll_sql,
    in_period,
    in_period_sql,
    period_bounds,
    period_end_sql,
    period_reading,
    period_reading_sql,
    period_start_after,
    period_start_after_sql,
    period_start_sql,
)
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_core.pricing import unpriced_reason, unpriced_reason_sql
from biz2bricks_rollup.holds_reconcile import HoldState, repair_holds
from biz2bricks_rollup.reconcile import Drift, repair
from biz2bricks_rollup.reprice import reprice
from tests.factories import (
    assert_counter_derivable,
    make_event,
    message_for,
    provisioned_org,
    write_events,
)

MOMENTS = [
    datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 3, 1, tzinfo=UTC),
    datetime(2024, 12, 31, 23, 30, tzinfo=UTC),
    datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC),
    datetime(2025, 6, 15, 12, tzinfo=UTC),
    datetime.fromisoformat("2025-07-01T01:30:00+05:00"),  # still June in UTC
]
LIMITS = (None, 0, 1_000, 100_000)
TOKEN_COUNTS = (0, 1, 999, 1_000, 1_001, 50_000)


async def sql_value(db: DatabaseManager, expression: str, params: dict[str, Any]) -> Any:
    """Evaluate one SQL expression with bound parameters."""
    async with db.engine.connect() as conn:
        return (await conn.execute(text("SELECT " + expression), params)).scalar_one()


async def test_period_bounds_in_sql_equal_period_bounds_in_python(db: DatabaseManager) -> None:
    statement = text(
        "SELECT s, "
        + period_end_sql("s", "CAST(:u AS text)")
        + " FROM (SELECT "
        + period_start_sql("CAST(:at AS timestamptz)", "CAST(:u AS text)")
        + " AS s) t"
    )
    async with db.engine.connect() as conn:
        for at, unit in itertools.product(MOMENTS, ("month", "year")):
            start, end = (await conn.execute(statement, {"at": at, "u": unit})).one()
            assert (start, end) == period_bounds(at, unit), (at, unit)


async def test_period_membership_in_sql_equals_python(db: DatabaseManager) -> None:
    start, end = period_bounds(MOMENTS[4])
    expression = in_period_sql(
        "CAST(:at AS timestamptz)", "CAST(:start AS timestamptz)", "CAST(:end AS timestamptz)"
    )
    edges = [start - timedelta(microseconds=1), start, end - timedelta(microseconds=1), end]
    for at in [*MOMENTS, *edges]:
        params = {"at": at, "start": start, "end": end}
        assert await sql_value(db, expression, params) is in_period(at, start, end), at
    assert in_period(start, start, end)
    assert not in_period(end, start, end)


async def test_an_ended_period_reads_zero_in_sql_and_python(db: DatabaseManager) -> None:
    end = datetime(2025, 7, 1, tzinfo=UTC)
    expression = period_reading_sql(
        "CAST(:v AS bigint)", "CAST(:end AS timestamptz)", "CAST(:now AS timestamptz)"
    )
    for value, now in itertools.product(
        (0, 7, 10**12), (end - timedelta(microseconds=1), end, end + timedelta(days=40))
    ):
        params = {"v": value, "end": end, "now": now}
        assert await sql_value(db, expression, params) == period_reading(value, end, now)
    assert period_reading(7, end, end) == 0
    assert period_reading(7, end, end - timedelta(seconds=1)) == 7


async def test_the_period_a_batch_moves_the_counters_to_in_sql_equals_python(
    db: DatabaseManager,
) -> None:
    expression = period_start_after_sql(
        "CAST(:start AS timestamptz)",
        "CAST(:end AS timestamptz)",
        "CAST(:newest AS timestamptz)",
        "CAST(:unit AS text)",
    )
    start, end = period_bounds(MOMENTS[4])
    for newest, unit in itertools.product(
        [*MOMENTS, end, end + timedelta(days=400)], ("month", "year")
    ):
        params = {"start": start, "end": end, "newest": newest, "unit": unit}
        expected = period_start_after(start, end, newest, unit)
        assert await sql_value(db, expression, params) == expected, params


async def test_counters_restart_when_the_period_rolls_in_sql_and_python(
    db: DatabaseManager,
) -> None:
    expression = counter_after_roll_sql(
        "CAST(:v AS numeric)", "CAST(:same AS boolean)", "CAST(:added AS numeric)"
    )
    for value, same, added in itertools.product(
        (Decimal(0), Decimal("12.5")), (True, False), (Decimal(0), Decimal(3))
    ):
        params = {"v": value, "same": same, "added": added}
        assert await sql_value(db, expression, params) == counter_after_roll(value, same, added)  # type: ignore[arg-type]
    assert counter_after_roll(10, False, 3) == 3


async def test_allowance_and_remaining_in_sql_equal_python(db: DatabaseManager) -> None:
    allowed = allowance_sql(
        "CAST(:limit AS bigint)", "CAST(:consumed AS bigint)", "CAST(:live AS bigint)"
    )
    left = remaining_sql(f"({allowed})", "CAST(:used AS bigint)", "CAST(:reserved AS bigint)")
    for limit, consumed, live, used, reserved in itertools.product(
        LIMITS, (0, 200), (0, 500), TOKEN_COUNTS, (0, 300)
    ):
        params = {
            "limit": limit,
            "consumed": consumed,
            "live": live,
            "used": used,
            "reserved": reserved,
        }
        expected_allowance = allowance(limit, consumed, live)
        assert await sql_value(db, allowed, params) == expected_allowance, params
        expected_left = remaining(expected_allowance, used, reserved)
        assert await sql_value(db, left, params) == expected_left, params
    assert allowance(None, 10**9, 10**9) is None
    assert allowance(1_000, 200, 500) == 1_700


async def test_the_token_limit_rule_in_the_database_equals_python(db: DatabaseManager) -> None:
    # usage_token_reason is the function the hold functions call (its body: TOKEN_REASON_BODY)
    expression = (
        "usage_token_reason(CAST(:used AS bigint), CAST(:reserved AS bigint),"
        " CAST(:estimate AS bigint), CAST(:allowance AS bigint), CAST(:soft AS boolean))"
    )
    for used, reserved, estimate, allowed, soft in itertools.product(
        (0, 900, 1_000), (0, 100), (0, 1, 101), LIMITS, (False, True)
    ):
        params = {
            "used": used,
            "reserved": reserved,
            "estimate": estimate,
            "allowance": allowed,
            "soft": soft,
        }
        expected = token_reason(used, reserved, estimate, allowed, soft)
        assert await sql_value(db, expression, params) == expected, params


async def test_event_tokens_and_unpriced_in_sql_equal_python(db: DatabaseManager) -> None:
    tokens = event_tokens_sql("CAST(:i AS bigint)", "CAST(:o AS bigint)")
    unpriced = unpriced_sql("CAST(:cost AS numeric)")
    for i, o, cost in itertools.product((0, 1, 10**10), (0, 7), (None, Decimal(0), Decimal("1.5"))):
        params = {"i": i, "o": o, "cost": cost}
        assert await sql_value(db, tokens, params) == event_tokens(i, o)
        assert await sql_value(db, unpriced, params) is is_unpriced(cost)
    # A $0 event is priced: only an unknown cost is unpriced.
    assert not is_unpriced(Decimal(0))


async def test_unpriced_count_of_a_group_in_sql_equals_python(db: DatabaseManager) -> None:
    costs: list[Decimal | None] = [None, Decimal(0), Decimal("2"), None, None]
    expression = f"{unpriced_count_sql('c')} FROM unnest(CAST(:costs AS numeric[])) AS t(c)"
    assert await sql_value(db, expression, {"costs": costs}) == sum(map(is_unpriced, costs))


async def test_unpriced_reason_in_sql_equals_python(db: DatabaseManager) -> None:
    expression = unpriced_reason_sql("CAST(:pricing_id AS integer)", "CAST(:reason AS text)")
    for pricing_id, reason in itertools.product(
        (None, 1), (None, "unknown_model", "no_price_at_time")
    ):
        params = {"pricing_id": pricing_id, "reason": reason}
        expected = unpriced_reason(pricing_id, reason)
        assert await sql_value(db, expression, params) == expected, params
    assert unpriced_reason(None, None) == "no_price_row"


async def test_grant_liveness_in_sql_equals_python(db: DatabaseManager) -> None:
    start = datetime(2025, 6, 1, tzinfo=UTC)
    end = start + timedelta(days=30)
    expression = grant_is_live_sql("g", "CAST(:now AS timestamptz)")
    statement = (
        f"{expression} FROM (SELECT CAST(:effective AS timestamptz) AS effective_at,"
        " CAST(:expires AS timestamptz) AS expires_at,"
        " CAST(:voided AS timestamptz) AS voided_at) g"
    )
    instants = (start - timedelta(microseconds=1), start, end - timedelta(microseconds=1), end)
    for now, expires, voided in itertools.product(instants, (None, end), (None, start)):
        grant = GrantState(uuid.uuid4(), 1, 10, start, expires, voided, start)
        params = {"now": now, "effective": start, "expires": expires, "voided": voided}
        assert await sql_value(db, statement, params) is grant_is_live(grant, now), params
    assert grant_is_live(GrantState(uuid.uuid4(), 1, 10, start, end, None, start), start)
    assert not grant_is_live(GrantState(uuid.uuid4(), 1, 10, start, end, None, start), end)


async def test_usage_beyond_the_plan_in_sql_equals_python(db: DatabaseManager) -> None:
    expression = beyond_plan_sql(
        "CAST(:before AS bigint)", "CAST(:after AS bigint)", "CAST(:limit AS bigint)"
    )
    for before, after, limit in itertools.product(
        (0, 900, 1_000, 1_200), (1_000, 1_100, 1_500), LIMITS
    ):
        if after < before:
            continue
        params = {"before": before, "after": after, "limit": limit}
        assert await sql_value(db, expression, params) == beyond_plan(before, after, limit)
    assert beyond_plan(900, 1_100, 1_000) == 100
    assert beyond_plan(1_200, 1_500, 1_000) == 300
    assert beyond_plan(0, 10**9, None) == 0


async def test_the_burn_in_sql_takes_what_the_python_rule_takes(db: DatabaseManager) -> None:
    # Given an organization with grants of every kind: priorities, expiries, a future one,
    # an expired one and a voided one
    org = await provisioned_org(db, plan="free")
    now = datetime.now(UTC)
    specs = [  # tokens, priority, effective_at, expires_at, voided
        (300, 10, now - timedelta(days=1), None, False),
        (200, 10, now - timedelta(days=1), now + timedelta(days=5), False),
        (100, 5, now - timedelta(days=1), now + timedelta(days=90), False),
        (400, 10, now + timedelta(days=1), None, False),  # not yet effective
        (500, 1, now - timedelta(days=9), now - timedelta(days=1), False),  # expired
        (600, 1, now - timedelta(days=1), None, True),  # voided
        (250, 10, now - timedelta(days=2), now + timedelta(days=5), False),  # same expiry, older
    ]
    async with db.driver() as conn:
        for tokens, priority, effective, expires, voided in specs:
            await conn.execute(
                "INSERT INTO credit_grants (organization_id, tokens, remaining, priority,"
                " effective_at, expires_at, voided_at, created_at)"
                " VALUES ($1, $2, $2, $3, $4, $5, $6, $4)",
                org,
                tokens,
                priority,
                effective,
                expires,
                now if voided else None,
            )
        await conn.execute(REFRESH_GRANTS, [org])
        rows = await conn.fetch(
            "SELECT id, remaining, priority, effective_at, expires_at, voided_at, created_at"
            " FROM credit_grants WHERE organization_id = $1",
            org,
        )
        grants = [GrantState(**dict(r)) for r in rows]
        # When usage of 600 tokens beyond the plan burns them in SQL
        async with conn.transaction():
            await conn.execute(
                "SELECT 1 FROM usage_limits WHERE organization_id = $1 FOR UPDATE", org
            )
            paid = await conn.fetchrow(BURN, [org], [600])
        taken = {
            r["id"]: (r["tokens"], r["tokens"] - r["remaining"])
            for r in await conn.fetch(
                "SELECT id, tokens, remaining FROM credit_grants WHERE organization_id = $1", org
            )
        }
        limits = await conn.fetchrow(
            "SELECT grants_consumed_period, grants_remaining FROM usage_limits"
            " WHERE organization_id = $1",
            org,
        )
    # Then it took exactly what the Python rule takes, in its order
    expected = dict(burn(grants, 600, datetime.now(UTC)))
    assert {g: t for g, (_, t) in taken.items() if t} == expected
    # priority 5 first, then the earliest expiry (the older of two equal ones first), then the
    # grant without expiry pays the rest; future, expired and voided grants pay nothing
    by_size = {size: t for size, t in taken.values()}
    assert by_size == {100: 100, 250: 250, 200: 200, 300: 50, 400: 0, 500: 0, 600: 0}
    assert paid["tokens"] == 600
    assert (limits["grants_consumed_period"], limits["grants_remaining"]) == (600, 250)


async def test_hold_settlement_arithmetic_in_sql_equals_python(db: DatabaseManager) -> None:
    expression = reserved_after_settle_sql("CAST(:reserved AS bigint)", "CAST(:settled AS bigint)")
    for reserved, settled in itertools.product((0, 100, 5_000), (None, 0, 100, 6_000)):
        params = {"reserved": reserved, "settled": settled}
        expected = reserved_after_settle(reserved, settled)
        assert await sql_value(db, expression, params) == expected, params


async def test_the_lock_order_in_sql_equals_python(db: DatabaseManager) -> None:
    # Given organizations whose ids differ in every byte position (uuid compares by bytes)
    orgs = [await provisioned_org(db) for _ in range(12)]
    orgs += [uuid.UUID(int=1 << shift) for shift in range(0, 128, 8)]  # not provisioned
    # When the locking query runs on them in a scrambled order
    async with db.engine.begin() as conn:
        locked = (
            await conn.execute(
                text(lock_counters_sql("SELECT unnest(CAST(:orgs AS uuid[]))")),
                {"orgs": list(reversed(orgs)) + orgs[:3]},
            )
        ).scalars()
        # Then it locks the provisioned ones, once each, in lock_order's order
        assert list(locked) == [o for o in lock_order(orgs) if o in orgs[:12]]


async def test_writers_of_the_counters_in_different_modules_never_deadlock(
    db: DatabaseManager,
) -> None:
    # Given organizations with usage, and the consumer's batches touching them in both orders
    orgs = [await provisioned_org(db) for _ in range(8)]
    book_batches = []
    for i in range(6):
        order = orgs if i % 2 else list(reversed(orgs))
        book_batches.append(
            build_batch(message_for(make_event(o, input_tokens=10 + i)) for o in order)
        )
    await write_events(db, [make_event(o) for o in orgs])
    book = await load_price_book(db, ModelNames())
    writer = BatchWriter(db, lambda: book)
    reversed_orgs = list(reversed(orgs))
    drifts = [Drift(o, 0, 0, Decimal(0), Decimal(0), 0, None) for o in reversed_orgs]
    holds = [HoldState(o, 0, 0, 0, 0) for o in reversed_orgs]
    today = datetime.now(UTC).date()
    # When the consumer, reconcile, the holds repair and reprice write them all at once
    work = [writer.write(b) for b in book_batches]
    for _ in range(3):
        work += [repair(db, drifts), repair_holds(db, holds)]
    work.append(
        reprice(db, first=today - timedelta(days=1), last=today, batch_size=3, organizations=orgs)
    )
    results = await asyncio.gather(*work, return_exceptions=True)
    # Then none failed (a deadlock would raise in one of them) and the counters are exact
    assert [r for r in results if isinstance(r, BaseException)] == []
    for org in orgs:
        await assert_counter_derivable(db, org)


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *itertools.chain.from_iterable(_nodes(p) for p in plan.get("Plans", []))]


async def test_the_burn_joins_no_rows_by_filtering_in_a_generic_plan(db: DatabaseManager) -> None:
    # Given 200 organizations with 5 live grants each, on a table never analyzed, and the
    # generic plan PostgreSQL keeps for a prepared statement after five runs (it knows neither
    # the batch's size nor the table's)
    orgs = sorted([await provisioned_org(db) for _ in range(200)])
    async with db.driver() as conn:
        await conn.execute(
            "INSERT INTO credit_grants (organization_id, tokens, remaining, priority, expires_at)"
            " SELECT o, 1000, 1000, 10 - i % 3, CASE WHEN i % 2 = 0 THEN NULL"
            "   ELSE now() + make_interval(days => 30 * i) END"
            " FROM unnest($1::uuid[]) o CROSS JOIN generate_series(1, 5) i",
            orgs,
        )
        await conn.execute(REFRESH_GRANTS, orgs)
        async with conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE burn_generic(uuid[], bigint[]) AS {BURN}")
            try:
                # EXPLAIN EXECUTE takes no bind parameters: the arrays go as literals.
                ids = ",".join(f"'{o}'" for o in orgs)
                needs = ",".join("1500" for _ in orgs)
                [row] = await conn.fetch(
                    "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE burn_generic("
                    f"ARRAY[{ids}]::uuid[], ARRAY[{needs}]::bigint[])"
                )
            finally:
                await conn.execute("DEALLOCATE burn_generic")
    # When the burn runs on that plan, then every organization paid 1,500 tokens, and no join
    # compared rows it then threw away (a nested loop of the batch over all the grants took
    # 0.45 s a batch at 1,000 organizations)
    explained = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    plan = explained[0]["Plan"]
    assert plan["Actual Rows"] == 200
    filtered = [
        (n["Node Type"], n["Rows Removed by Join Filter"])
        for n in _nodes(plan)
        if n.get("Rows Removed by Join Filter")
    ]
    assert filtered == []


async def test_what_grants_owe_in_sql_equals_python_at_every_instant(db: DatabaseManager) -> None:
    # Given grants of every kind, and tokens paid from the cache written at several instants
    # (before a grant started, while all were live, after one expired)
    org = await provisioned_org(db, plan="free")
    now = datetime.now(UTC)
    specs = [  # tokens, priority, effective_at, expires_at
        (300, 10, now - timedelta(days=3), None),
        (200, 10, now - timedelta(days=3), now - timedelta(days=1)),  # expired a day ago
        (100, 5, now - timedelta(days=3), now + timedelta(days=90)),
        (400, 10, now - timedelta(hours=1), None),  # effective an hour ago
        (250, 10, now - timedelta(days=2), now + timedelta(days=5)),
    ]
    async with db.driver() as conn:
        for tokens, priority, effective, expires in specs:
            await conn.execute(
                "INSERT INTO credit_grants (organization_id, tokens, remaining, priority,"
                " effective_at, expires_at, created_at) VALUES ($1, $2, $2, $3, $4, $5, $4)",
                org,
                tokens,
                priority,
                effective,
                expires,
            )
        rows = await conn.fetch(
            "SELECT id, remaining, priority, effective_at, expires_at, voided_at, created_at"
            " FROM credit_grants WHERE organization_id = $1",
            org,
        )
        grants = [GrantState(**dict(r)) for r in rows]
        cached_instants = (now - timedelta(days=2), now - timedelta(minutes=30), now, None)
        for cached_at, pending in itertools.product(cached_instants, (0, 1, 99, 450, 900, 5_000)):
            # When the counter row says the grants live at cached_at owe `pending`, and the
            # cache is stale (so readers go to the rows)
            await conn.execute(
                "UPDATE usage_limits SET grants_pending = $2, grants_cached_at = $3,"
                " grants_next_change = now() - interval '1 second' WHERE organization_id = $1",
                org,
                pending,
                cached_at,
            )
            in_sql = {
                r["id"]: r["owed"]
                for r in await conn.fetch(
                    f"SELECT s.id, s.owed FROM usage_limits l CROSS JOIN LATERAL"
                    f" {grants_owing_sql('l')} s WHERE l.organization_id = $1 AND s.owed > 0",
                    org,
                )
            }
            live_in_sql = await conn.fetchval(
                f"SELECT {live_grants_remaining_sql('l')} FROM usage_limits l"
                " WHERE l.organization_id = $1",
                org,
            )
            # Then SQL and Python agree on what each grant owes and on what is live now
            expected = owed(grants, pending, cached_at)
            assert in_sql == expected, (cached_at, pending)
            live_now = sum(
                g.remaining - expected.get(g.id, 0)
                for g in grants
                if grant_is_live(g, datetime.now(UTC))
            )
            assert live_in_sql == live_now, (cached_at, pending)
    # Two days ago the 400 was not yet effective: priority 5 first, then the earliest expiry
    by_tokens = {g.remaining: g.id for g in grants}
    assert owed(grants, 450, now - timedelta(days=2)) == {
        by_tokens[100]: 100,
        by_tokens[200]: 200,
        by_tokens[250]: 150,
    }
