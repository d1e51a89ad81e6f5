"""usage_events by id month: promise 1 across partitions, months far ahead or behind, retention."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import text

from biz2bricks_consumer.batching import CONFLICTING_DUPLICATE, build_batch
from biz2bricks_consumer.errors import Outcome, classify_db_error
from biz2bricks_consumer.partitions import PartitionGuard
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import DatabaseManager, new_event_id
from biz2bricks_core.event_ids import event_id_month
from biz2bricks_core.event_partitions import detach_and_drop_sql, partition_name
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_core.retention import OLDER_THAN_RETENTION, add_months, month_of
from tests.factories import event_count, make_event, message_for, provisioned_org


def v7_at(moment: datetime) -> uuid.UUID:
    """A v7 id carrying ``moment`` (random tail, version and variant set)."""
    ms = int(moment.timestamp() * 1000)
    tail = uuid.uuid4().int & ((1 << 80) - 1)
    tail = (tail & ~(0xF << 76)) | (0x7 << 76)  # version 7
    tail = (tail & ~(0x3 << 62)) | (0x2 << 62)  # RFC variant
    return uuid.UUID(int=(ms << 80) | tail)


async def writer_for(db: DatabaseManager, guard: PartitionGuard | None = None) -> BatchWriter:
    book = await load_price_book(db, ModelNames())
    return BatchWriter(db, lambda: book, guard or PartitionGuard(db, 13))


async def stored_in(db: DatabaseManager, event_id: uuid.UUID) -> list[str]:
    """The partitions holding rows of the event id."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT tableoid::regclass::text FROM usage_events WHERE event_id = :e"),
            {"e": event_id},
        )
        return [r[0] for r in rows]


async def test_a_redelivery_with_another_months_occurred_at_is_stored_once(
    db: DatabaseManager,
) -> None:
    # Given an event stored with a v7 id of this month
    writer = await writer_for(db)
    org = await provisioned_org(db)
    event = make_event(org, event_id=new_event_id())
    assert (await writer.write(build_batch([message_for(event)]))).inserted == 1
    # When the same id arrives again, occurring in the previous month, then again unchanged
    moved = event.model_copy(update={"occurred_at": event.occurred_at - timedelta(days=40)})
    second = await writer.write(build_batch([message_for(moved)]))
    third = await writer.write(build_batch([message_for(event)]))
    # Then one row, in the partition of the id's month; the moved copy is a conflict reject
    assert await stored_in(db, event.event_id) == [partition_name(event_id_month(event.event_id))]
    assert (second.inserted, [r.reason_code for r in second.rejected]) == (
        0,
        [CONFLICTING_DUPLICATE],
    )
    assert "occurred_at" in second.rejected[0].reason
    assert (third.inserted, third.duplicates, third.rejected) == (0, 1, [])


async def test_a_v4_id_is_stored_once_in_the_untimed_partition(db: DatabaseManager) -> None:
    writer = await writer_for(db)
    org = await provisioned_org(db)
    event = make_event(org, event_id=uuid.uuid4())
    await writer.write(build_batch([message_for(event)]))
    other_month = event.model_copy(update={"occurred_at": event.occurred_at - timedelta(days=33)})
    result = await writer.write(build_batch([message_for(other_month)]))
    assert await stored_in(db, event.event_id) == ["usage_events_untimed"]
    assert [r.reason_code for r in result.rejected] == [CONFLICTING_DUPLICATE]


async def test_an_id_far_in_the_future_gets_its_partition_on_demand(db: DatabaseManager) -> None:
    # Given a caller-supplied v7 id of a month no partition exists for
    writer = await writer_for(db)
    org = await provisioned_org(db)
    far = v7_at(datetime(2187, 5, 17, tzinfo=UTC))
    # When it is written
    result = await writer.write(build_batch([message_for(make_event(org, event_id=far))]))
    # Then its month's partition was made and it is stored there, counted once
    assert result.inserted == 1
    assert await stored_in(db, far) == ["usage_events_y2187m05"]


async def test_an_id_past_the_year_9999_is_stored_untimed_and_the_batch_written(
    db: DatabaseManager,
) -> None:
    # Given a batch with a v7 id whose 48-bit time reads as the year 10889 (no date holds it)
    writer = await writer_for(db)
    org = await provisioned_org(db)
    last = uuid.UUID("ffffffff-ffff-7fff-bfff-ffffffffffff")
    events = [make_event(org, event_id=last), make_event(org, event_id=new_event_id())]
    # When written
    result = await writer.write(build_batch(message_for(e) for e in events))
    # Then both are stored, that one in the untimed partition; a redelivery is a duplicate
    assert (result.inserted, result.rejected) == (2, [])
    assert await stored_in(db, last) == ["usage_events_untimed"]
    again = await writer.write(build_batch([message_for(events[0])]))
    assert (again.inserted, again.duplicates) == (0, 1)


async def test_events_beyond_retention_are_rejects_and_the_rest_is_written(
    db: DatabaseManager,
) -> None:
    # Given a batch with an event too old, an id carrying a month long gone, and a normal one
    writer = await writer_for(db)
    org = await provisioned_org(db)
    now = datetime.now(UTC)
    old = make_event(org, occurred_at=now - timedelta(days=3 * 366))
    past_id = make_event(org, event_id=v7_at(datetime(1999, 3, 1, tzinfo=UTC)))
    fine = make_event(org, event_id=new_event_id())
    # When written
    result = await writer.write(build_batch(message_for(e) for e in (old, past_id, fine)))
    # Then the two are older_than_retention rejects, each saying why; the third is stored
    assert result.inserted == 1
    assert sorted((r.reason_code, r.reason.split(":")[0]) for r in result.rejected) == [
        (OLDER_THAN_RETENTION, "event_id"),
        (OLDER_THAN_RETENTION, "occurred_at"),
    ]
    assert await event_count(db, org) == 1
    async with db.engine.connect() as conn:
        kept = await conn.execute(
            text(
                "SELECT count(*) FROM usage_event_rejects WHERE organization_id = :o"
                " AND reason_code = :c"
            ),
            {"o": org, "c": OLDER_THAN_RETENTION},
        )
        assert kept.scalar_one() == 2


async def test_a_partition_dropped_behind_the_guards_back_is_made_again_or_rejected(
    db: DatabaseManager,
) -> None:
    # Given a guard that has seen a month's partition, which is then dropped by hand
    guard = PartitionGuard(db, 13)
    writer = await writer_for(db, guard)
    org = await provisioned_org(db)
    month = date(2203, 2, 1)
    first = v7_at(datetime(2203, 2, 3, tzinfo=UTC))
    await writer.write(build_batch([message_for(make_event(org, event_id=first))]))
    async with db.driver() as conn:
        for statement in detach_and_drop_sql(month):
            await conn.execute(statement)
    second = make_event(org, event_id=v7_at(datetime(2203, 2, 4, tzinfo=UTC)))
    # When the stale guard writes an event of that month: the database refuses the row
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await writer.write(build_batch([message_for(second)]))
    # Then the worker isolates it into a reject (never a retry loop, never lost) ...
    assert classify_db_error(refused.value) is Outcome.ISOLATE
    # ... and a fresh guard (as after its refresh) makes the partition again and stores it
    fresh = await writer_for(db)
    assert (await fresh.write(build_batch([message_for(second)]))).inserted == 1
    assert month_of(datetime(2203, 2, 4, tzinfo=UTC)) == month == add_months(date(2203, 1, 1), 1)
