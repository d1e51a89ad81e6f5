"""Events spread over old months, written through the consumer's real path, for the archive."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import text

from biz2bricks_consumer.batching import build_batch
from biz2bricks_consumer.partitions import PartitionGuard
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import DatabaseManager
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_core.retention import add_months, month_of
from tests.factories import make_event, message_for, provisioned_org


def v7_at(moment: datetime) -> uuid.UUID:
    """A v7 id carrying ``moment``."""
    ms = int(moment.timestamp() * 1000)
    tail = uuid.uuid4().int & ((1 << 80) - 1)
    tail = (tail & ~(0xF << 76)) | (0x7 << 76)
    tail = (tail & ~(0x3 << 62)) | (0x2 << 62)
    return uuid.UUID(int=(ms << 80) | tail)


def months_ago(n: int) -> date:
    return add_months(month_of(datetime.now(UTC)), -n)


async def seed(db: DatabaseManager, months: list[int], per_month: int) -> None:
    """Per month ``n`` months ago: v7 events of that month, a few v4 ones, and a few late
    events whose id carries the next month; plus events of now."""
    book = await load_price_book(db, ModelNames())
    # Written as they arrived back then: no retention horizon applies to the set-up.
    writer = BatchWriter(db, lambda: book, PartitionGuard(db, 1200))
    orgs = [await provisioned_org(db) for _ in range(3)]
    events = []
    for n in months:
        start = datetime.combine(months_ago(n), datetime.min.time(), tzinfo=UTC)
        for i in range(per_month):
            at = start + timedelta(minutes=7 * i + 1)
            event_id = uuid.uuid4() if i % 10 == 0 else v7_at(at)
            if i % 25 == 1:  # arrived late: its id was made in the next month
                event_id = v7_at(datetime.combine(months_ago(n - 1), datetime.min.time(), UTC))
            events.append(
                make_event(
                    orgs[i % 3],
                    event_id=event_id,
                    occurred_at=at,
                    input_tokens=100 + i,
                    output_tokens=10 + i % 7,
                    model=("gpt-4o", "gpt-4o-mini", "mystery-model")[i % 3],
                )
            )
    events += [make_event(orgs[i % 3], input_tokens=5) for i in range(10)]
    for i in range(0, len(events), 500):
        await writer.write(build_batch(message_for(e) for e in events[i : i + 500]))


async def rows_before(db: DatabaseManager, month: date) -> list[tuple[Any, ...]]:
    """(event_id, input, output, cost, month) of every event before ``month``."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT CAST(event_id AS text), input_tokens, output_tokens, cost_usd,"
                " to_char(timezone('UTC', occurred_at), 'YYYY-MM') FROM usage_events"
                " WHERE occurred_at < :m"
            ),
            {"m": datetime.combine(month, datetime.min.time(), UTC)},
        )
        return sorted(tuple(r) for r in rows)


async def table_snapshot(db: DatabaseManager, table: str) -> list[tuple[Any, ...]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(text(f"SELECT * FROM {table}"))
        return sorted(tuple(str(v) for v in r) for r in rows)
