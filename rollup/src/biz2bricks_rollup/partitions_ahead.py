"""The rollup run makes the partitions of usage_events for this month and the next ones."""

from __future__ import annotations

from datetime import UTC, datetime

from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.event_partitions import AHEAD_MONTHS, ensure_partitions
from biz2bricks_core.retention import add_months, month_of


async def create_partitions_ahead(db: DatabaseManager, now: datetime | None = None) -> None:
    """Ensure partitions exist from the current UTC month to AHEAD_MONTHS after it.

    Run daily, so the consumer finds the next month's partition made weeks before its first
    event; the consumer still creates any it lacks (biz2bricks_consumer.partitions).
    """
    current = month_of(now or datetime.now(UTC))
    async with db.driver() as conn:
        await ensure_partitions(conn, [add_months(current, n) for n in range(AHEAD_MONTHS + 1)])
