"""A correction rebuilds the daily summaries it touched in its own transaction: right after a
void or an amendment, usage_daily_summaries and usage_daily_breakdowns hold what a fresh rollup
of those days would write, without waiting for the next rollup run."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import text

from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_rollup.rollup import run_rollup
from tests.factories import make_event, provisioned_org, write_events

SUMMARIES = text(
    "SELECT day, provider, model, price_variant, request_count, input_tokens, output_tokens,"
    " cost_usd, unpriced_count FROM usage_daily_summaries"
    " WHERE organization_id = :o AND day = ANY(:days) ORDER BY day, provider, model, price_variant"
)
BREAKDOWNS = text(
    "SELECT day, dimensions, provider, model, user_id, operation, request_count, input_tokens,"
    " output_tokens, cost_usd FROM usage_daily_breakdowns"
    " WHERE organization_id = :o AND day = ANY(:days)"
    " ORDER BY day, dimensions, provider, model, user_id, operation"
)


async def summaries(db: DatabaseManager, org: uuid.UUID, days: list[date]) -> list[Any]:
    """The organization's summary and breakdown rows of ``days``, as tuples."""
    async with db.engine.connect() as conn:
        rows = [tuple(r) for r in await conn.execute(SUMMARIES, {"o": org, "days": days})]
        parts = [tuple(r) for r in await conn.execute(BREAKDOWNS, {"o": org, "days": days})]
    return rows + parts


def past_days() -> tuple[datetime, datetime]:
    """Noon two and three days ago: days the rollup has run for."""
    noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    return noon - timedelta(days=3), noon - timedelta(days=2)


async def test_a_void_rebuilds_the_summaries_of_its_days_in_its_own_transaction(
    db: DatabaseManager,
) -> None:
    # Given two summarised days of an organization, with users and operations
    org = await provisioned_org(db)
    first, second = past_days()
    users = [uuid.uuid4(), uuid.uuid4()]
    events = [
        make_event(
            org,
            occurred_at=moment + timedelta(minutes=i),
            user_id=users[i % 2],
            operation="summarize" if i % 3 else "extract",
            input_tokens=1_000 + i,
        )
        for moment in (first, second)
        for i in range(6)
    ]
    await write_events(db, events)
    days = [first.date(), second.date()]
    await run_rollup(db, days, wait=True)
    before = await summaries(db, org, days)
    # When calls of both days are voided (by time range, then by id)
    service = UsageService(db)
    await service.void_events(
        org, start=first, end=first + timedelta(minutes=3), reason="provider outage"
    )
    await service.void_events(org, event_ids=[events[7].event_id], reason="duplicate")
    # Then the summaries changed at once, and equal what a fresh rollup of the days writes
    after = await summaries(db, org, days)
    assert after != before
    first_day = [r for r in after if r[0] == days[0] and len(r) == 9]
    assert sum(r[4] for r in first_day) == 3  # requests left on the first day
    await run_rollup(db, days, wait=True)
    assert await summaries(db, org, days) == after


async def test_an_amendment_rebuilds_both_organizations_days(db: DatabaseManager) -> None:
    # Given a call summarised under the wrong organization, model and day
    wrong, right = await provisioned_org(db), await provisioned_org(db)
    first, second = past_days()
    event = make_event(wrong, occurred_at=first, model="gpt-4o", user_id=uuid.uuid4())
    other = make_event(right, occurred_at=second, model="gpt-4o-mini")
    await write_events(db, [event, other])
    days = [first.date(), second.date()]
    await run_rollup(db, days, wait=True)
    # When it is amended to the right organization, model and day
    await UsageService(db).amend_event(
        event.event_id,
        reason="billed to the wrong tenant",
        organization_id=right,
        model="gpt-4o-mini",
        occurred_at=second + timedelta(minutes=5),
    )
    # Then, before any rollup, the wrong organization has no summary left and the right one
    # counts both calls on the second day, as a fresh rollup would
    assert await summaries(db, wrong, days) == []
    right_rows = await summaries(db, right, days)
    assert [(r[0], r[2], r[4]) for r in right_rows if len(r) == 9] == [(days[1], "gpt-4o-mini", 2)]
    await run_rollup(db, days, wait=True)
    assert await summaries(db, wrong, days) == []
    assert await summaries(db, right, days) == right_rows


async def test_voids_beside_rollups_of_the_same_days_never_deadlock(db: DatabaseManager) -> None:
    # Given organizations with usage on two summarised days
    orgs = [await provisioned_org(db) for _ in range(4)]
    first, second = past_days()
    events = {
        org: [
            make_event(org, occurred_at=moment + timedelta(minutes=i), model=model)
            for moment in (first, second)
            for i, model in enumerate(("gpt-4o", "gpt-4o-mini", "gpt-4.1"))
        ]
        for org in orgs
    }
    await write_events(db, [e for batch in events.values() for e in batch])
    days = [first.date(), second.date()]
    await run_rollup(db, days, wait=True)
    service = UsageService(db)
    # When voids of both days run beside rollups of those days
    work: list[Any] = [
        service.void_events(org, event_ids=[e.event_id for e in batch[::2]], reason="dup")
        for org, batch in events.items()
    ]
    work += [run_rollup(db, days, wait=True) for _ in range(2)]
    results = await asyncio.gather(*work, return_exceptions=True)
    # Then none failed, and every organization's summaries equal a fresh rollup's
    assert [r for r in results if isinstance(r, BaseException)] == []
    now = {org: await summaries(db, org, days) for org in orgs}
    await run_rollup(db, days, wait=True)
    for org in orgs:
        assert await summaries(db, org, days) == now[org]
        assert sum(r[4] for r in now[org] if len(r) == 9) == 3
