"""Before a batch is written: events beyond retention become rejects, and every partition of
usage_events that the other events need exists (biz2bricks_core.event_partitions).

- ``older_than_retention``: an event whose ``occurred_at`` lies before the retention horizon
  (biz2bricks_core.retention), or whose v7 id carries a month before it. Its month is archived
  (or is about to be: the archive lags the horizon by a grace period), so storing it would
  count it into a day whose summaries are final and whose events have left PostgreSQL; and a
  partition of its id's month is gone, so its uniqueness could no longer be checked. Kept
  whole as a reject, like every message that does not become an event (promise 4).
- A month no partition is known for (the first batch of a month, an id far in the future): the
  partition is created before the batch's transaction, under the creation lock, once per
  process; the known months are read again every ``REFRESH_S``. A partition that vanishes
  anyway (dropped by hand) makes the insert fail with SQLSTATE 23514, which the worker
  isolates into a reject naming it: nothing is lost, and the next refresh creates it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Final

from biz2bricks_consumer.batching import Batch, Reject
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.event_ids import UNTIMED, event_id_month, event_id_months
from biz2bricks_core.event_partitions import ensure_partitions
from biz2bricks_core.events import UsageEvent
from biz2bricks_core.retention import OLDER_THAN_RETENTION, retention_horizon

REFRESH_S: Final = 300.0


def too_old_reason(
    event: UsageEvent, horizon: date, horizon_start: datetime | None = None
) -> str | None:
    """Why ``event`` is beyond the retention that starts at ``horizon`` (the instant
    ``horizon_start``, computed here if not given), or None."""
    if horizon_start is None:
        horizon_start = datetime(horizon.year, horizon.month, horizon.day, tzinfo=UTC)
    if event.occurred_at < horizon_start:
        return (
            f"occurred_at: {event.occurred_at.isoformat()} is before the retention horizon "
            f"{horizon.isoformat()}; its month is archived"
        )
    month = event_id_month(event.event_id)
    if month != UNTIMED and month < horizon:
        return (
            f"event_id: {event.event_id} carries the month {month.isoformat()}, before the "
            f"retention horizon {horizon.isoformat()}"
        )
    return None


def without_too_old(batch: Batch, horizon: date, months: set[date] | None = None) -> Batch:
    """The batch with its events beyond retention moved to its rejects (the same batch if none).

    ``months``: the batch's ``event_id_months``, if the caller has them.
    """
    start = datetime(horizon.year, horizon.month, horizon.day, tzinfo=UTC)
    if months is None:
        months = event_id_months(e.event_id for e in batch.events)
    if all(m == UNTIMED or m >= horizon for m in months) and all(
        e.occurred_at >= start for e in batch.events
    ):
        return batch  # nearly every batch: one pass, no reason built
    reasons = [too_old_reason(e, horizon, start) for e in batch.events]
    kept = Batch(
        rejects=list(batch.rejects),
        duplicates=batch.duplicates,
        oldest_publish_time_s=batch.oldest_publish_time_s,
    )
    for event, source, reason in zip(batch.events, batch.sources, reasons, strict=True):
        if reason is None:
            kept.events.append(event)
            kept.sources.append(source)
        else:
            kept.rejects.append(Reject(source, OLDER_THAN_RETENTION, reason))
    return kept


class PartitionGuard:
    """Makes a batch writable into the partitioned usage_events; one per writer."""

    def __init__(
        self,
        db: DatabaseManager,
        retention_months: int = 13,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._months = retention_months
        self._clock = clock
        self._known: set[date] = set()
        self._read_at = float("-inf")

    async def admit(self, batch: Batch) -> Batch:
        """The batch to write: too-old events as rejects, every needed partition created."""
        months = event_id_months(e.event_id for e in batch.events)
        kept = without_too_old(batch, retention_horizon(self._clock(), self._months), months)
        if kept is not batch:  # the rejected events' months need no partition
            months = event_id_months(e.event_id for e in kept.events)
        if time.monotonic() - self._read_at > REFRESH_S:
            self._known = set()
        needed = months - self._known
        if needed:
            async with self._db.driver() as conn:
                self._known = await ensure_partitions(conn, needed)
            self._read_at = time.monotonic()
        return kept
