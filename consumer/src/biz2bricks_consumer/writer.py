"""The write path: one transaction per batch, set-based SQL, counters updated once per org.

1. The batch statement (biz2bricks_core.recording) locks the batch's usage_limits rows in
   organization-id order (replicas cannot deadlock), inserts the events of the organizations
   it locked (ON CONFLICT DO NOTHING) and, from the rows it actually inserted, counts them in
   each organization's current period, settles their holds, writes crossed alert thresholds
   and burns credit grants. Redelivered events insert nothing and so change nothing.
2. Events of organizations that are not provisioned become ``unknown_organization`` rejects.
3. When fewer rows were inserted than sent, the event_ids that were already stored (by an
   earlier transaction) are compared with what arrived: other content under the same
   event_id is a ``conflicting_duplicate`` reject, an identical redelivery stays silent.
4. Rejects are inserted in the same transaction. The caller acks only after the commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from biz2bricks_consumer.batching import (
    CONFLICTING_DUPLICATE,
    Batch,
    InboundMessage,
    Reject,
    conflict_reason,
    storable_attributes,
)
from biz2bricks_consumer.partitions import PartitionGuard
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.events import UsageEvent
from biz2bricks_core.pricing import PriceBook
from biz2bricks_core.recording import Unpriced, record_events
from biz2bricks_core.retention import RetentionSettings

# Stored rows of a batch's event_ids that this transaction did not write itself (xmin is the
# inserting transaction): the duplicates, with the content to compare against.
STORED_DUPLICATES = (
    "SELECT * FROM usage_events WHERE event_id = ANY($1::uuid[])"
    " AND xmin <> pg_current_xact_id()::xid"
)

INSERT_REJECTS = (
    "INSERT INTO usage_event_rejects (organization_id, message_id, reason, reason_code,"
    " raw_data, attributes, delivery_attempt, published_at)"
    " SELECT o, m, r, c, d, a::jsonb, n, p FROM unnest($1::uuid[], $2::text[], $3::text[],"
    " $4::text[], $5::bytea[], $6::text[], $7::integer[], $8::timestamptz[])"
    " AS t(o, m, r, c, d, a, n, p)"
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one committed batch did."""

    inserted: int
    duplicates: int
    rejected: list[Reject]
    # Inserted events without a price, and the (provider, model, reason) the batch had.
    unpriced: int = 0
    unpriced_models: list[Unpriced] = field(default_factory=list)
    holds_settled: int = 0
    alerts_created: int = 0
    # Tokens that usage beyond the plans took from credit grants.
    grants_consumed: int = 0

    @property
    def conflicts(self) -> int:
        """Rejects that reuse a stored event_id with other content."""
        return sum(1 for r in self.rejected if r.reason_code == CONFLICTING_DUPLICATE)


def reject_columns(rejects: Sequence[Reject]) -> tuple[list[Any], ...]:
    """Column arrays for INSERT_REJECTS, in its parameter order."""
    return (
        [r.organization_id for r in rejects],
        [r.message.message_id for r in rejects],
        [r.reason for r in rejects],
        [r.reason_code for r in rejects],
        [r.message.data for r in rejects],
        [json.dumps(storable_attributes(r.message.attributes)) for r in rejects],
        [r.message.delivery_attempt for r in rejects],
        [r.message.publish_time for r in rejects],
    )


class BatchWriter:
    """Writes decoded batches; each ``write`` is one committed transaction."""

    def __init__(
        self,
        db: DatabaseManager,
        prices: Callable[[], PriceBook],
        partitions: PartitionGuard | None = None,
    ) -> None:
        self._db = db
        self._prices = prices
        # Default: retention from the environment (USAGE_EVENTS_RETENTION_MONTHS).
        self._partitions = partitions or PartitionGuard(db, RetentionSettings().events_months)

    async def write(self, batch: Batch) -> WriteResult:
        """Commit the batch's events, counters and rejects together, or raise and change nothing."""
        batch = await self._partitions.admit(batch)  # retention rejects; partitions exist
        events, rejects = batch.events, list(batch.rejects)
        inserted = conflicting = unpriced = settled = alerts = consumed = 0
        unpriced_models: list[Unpriced] = []
        async with self._db.driver() as conn, conn.transaction():
            if events:
                recorded = await record_events(conn, events, self._prices())
                inserted, unpriced = recorded.inserted, recorded.unpriced
                settled, alerts = recorded.holds_settled, recorded.alerts_created
                consumed, unpriced_models = recorded.grants_consumed, recorded.unpriced_models
                not_stored = set(recorded.unknown_organizations)
                if not_stored:
                    events, unknown = _split_unknown(batch, not_stored)
                    rejects.extend(unknown)
                if inserted < len(events):
                    conflicts = await _conflicts(conn, events, batch.sources_of(events))
                    rejects.extend(conflicts)
                    conflicting = len(conflicts)
            if rejects:
                await conn.execute(INSERT_REJECTS, *reject_columns(rejects))
        duplicates = len(events) - inserted - conflicting + batch.duplicates_in_batch
        return WriteResult(
            inserted, duplicates, rejects, unpriced, unpriced_models, settled, alerts, consumed
        )


async def _conflicts(
    conn: Any, events: Sequence[UsageEvent], sources: dict[uuid.UUID, InboundMessage]
) -> list[Reject]:
    """Rejects for events whose event_id is stored with other content (both versions named)."""
    by_id = {e.event_id: e for e in events}
    rejects = []
    for row in await conn.fetch(STORED_DUPLICATES, list(by_id)):
        stored = dict(row)
        if isinstance(stored.get("metadata"), str):
            stored["metadata"] = json.loads(stored["metadata"], parse_float=Decimal)
        event = by_id[stored["event_id"]]
        reason = conflict_reason(stored, event)
        if reason is not None:
            rejects.append(Reject(sources[event.event_id], CONFLICTING_DUPLICATE, reason))
    return rejects


def _split_unknown(
    batch: Batch, unknown_orgs: set[uuid.UUID]
) -> tuple[list[UsageEvent], list[Reject]]:
    keep, unknown = batch.split_off(unknown_orgs)
    return keep, [
        Reject(
            message,
            "unknown_organization",
            f"organization_id: {event.organization_id} is not a provisioned organization",
        )
        for event, message in unknown
    ]
