"""Reconcile: recompute each organization's counters from the facts and repair drift.

Tokens, cost and the count of unpriced events come from ``usage_events`` in the organization's
current period; what credit grants paid for in it from the consume rows of ``credit_ledger``;
the cache of the live grants' remaining from ``credit_grants``. Storage is judged only where
the project can derive it: an organization with rows in ``documents`` (live or deleted) has
``storage_used_bytes`` = the sum of its live documents' sizes. An organization without any
documents row keeps its documents elsewhere (its application reserves and releases storage
through UsageService but does not write ``documents``): its reserved total is reported, never
judged as drift and never "repaired" to zero.

Repairs lock the rows they fix (organization order, as the consumer does), recompute under the
lock and write in the same transaction, so they cannot race the consumer. Caveat: a storage
reservation whose document row is not yet written (an upload in progress) looks like drift; run
``--fix`` when uploads are quiet, or accept that it re-reserves on commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import text

from biz2bricks_core.counters import lock_counters_sql
from biz2bricks_core.counting import event_tokens_sql, unpriced_count_sql
from biz2bricks_core.credits import (
    grant_is_live_sql,
    grants_cache_valid_sql,
    grants_owing_sql,
    refresh_grants,
)
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.periods import in_period_sql

# What grants paid for in the period: its consume rows in the ledger, less its restores, and
# what the batch path paid from the cache in it that the grants still owe.
CONSUMED = (
    "coalesce(c.consumed, 0) + CASE WHEN l.grants_pending_period = l.period_start"
    " THEN l.grants_pending ELSE 0 END"
)
EXPECTED = f"""
SELECT l.organization_id,
    l.tokens_used_period, coalesce(e.tokens, 0) AS expected_tokens,
    l.cost_usd_period, coalesce(e.cost, 0) AS expected_cost,
    l.unpriced_events_period, coalesce(e.unpriced, 0) AS expected_unpriced,
    l.storage_used_bytes,
    CASE WHEN d.derivable THEN coalesce(d.bytes, 0) END AS expected_storage,
    l.grants_consumed_period, {CONSUMED} AS expected_grants_consumed,
    l.grants_remaining, coalesce(g.live, 0) AS expected_grants_remaining
FROM usage_limits l
LEFT JOIN LATERAL (
    SELECT sum({event_tokens_sql("input_tokens", "output_tokens")}) AS tokens,
        sum(cost_usd) AS cost, {unpriced_count_sql("cost_usd")} AS unpriced
    FROM usage_events ev WHERE ev.organization_id = l.organization_id
        AND {in_period_sql("ev.occurred_at", "l.period_start", "l.period_end")}
        AND ev.voided_at IS NULL) e ON true
LEFT JOIN LATERAL (
    SELECT sum(size_bytes) FILTER (WHERE doc.deleted_at IS NULL) AS bytes,
        count(*) > 0 AS derivable
    FROM documents doc WHERE doc.organization_id = l.organization_id) d ON true
LEFT JOIN LATERAL (
    SELECT sum(CASE WHEN cl.kind = 'consume' THEN tokens ELSE -tokens END) AS consumed
    FROM credit_ledger cl
    WHERE cl.organization_id = l.organization_id AND cl.kind IN ('consume', 'restore')
        AND cl.period_start = l.period_start) c ON true
LEFT JOIN LATERAL (
    SELECT sum(gr.remaining - gr.owed) AS live FROM {grants_owing_sql("l")} gr
    WHERE {grant_is_live_sql("gr")}) g ON true
WHERE {{where}}
ORDER BY l.organization_id
"""
# Storage counts as drift only where documents rows make it derivable (the module docstring).
DRIFTED = (
    "l.tokens_used_period <> coalesce(e.tokens, 0) OR l.cost_usd_period <> coalesce(e.cost, 0)"
    " OR l.unpriced_events_period <> coalesce(e.unpriced, 0)"
    " OR (d.derivable AND l.storage_used_bytes <> coalesce(d.bytes, 0))"
    # What grants paid for in the period is the sum of its consume rows in the ledger; the
    # cache of the live grants is judged only while it claims to be exact.
    f" OR l.grants_consumed_period <> {CONSUMED}"
    f" OR ({grants_cache_valid_sql('l')} AND l.grants_remaining <> coalesce(g.live, 0))"
)
FIND = text(EXPECTED.format(where=DRIFTED))
RECHECK = text(EXPECTED.format(where="l.organization_id = ANY(:orgs) AND (" + DRIFTED + ")"))
RESERVED_ONLY = text(
    "SELECT l.organization_id, l.storage_used_bytes FROM usage_limits l"
    " WHERE l.storage_used_bytes > 0"
    " AND NOT EXISTS (SELECT 1 FROM documents doc WHERE doc.organization_id = l.organization_id)"
    " ORDER BY l.organization_id"
)
LOCK = text(lock_counters_sql("SELECT unnest(CAST(:orgs AS uuid[]))"))
REPAIR = text(
    "UPDATE usage_limits SET tokens_used_period = :tokens, cost_usd_period = :cost,"
    " unpriced_events_period = :unpriced, grants_consumed_period = :grants_consumed,"
    " storage_used_bytes = coalesce(:storage, storage_used_bytes), updated_at = now()"
    " WHERE organization_id = :org"
)
AUDIT = text(
    "INSERT INTO audit_logs (organization_id, action, entity_type, entity_id, details)"
    " VALUES (:org, 'usage.reconcile', 'usage_limits', :entity, CAST(:details AS jsonb))"
)


@dataclass(frozen=True)
class Drift:
    """One organization whose counters differ from the facts."""

    organization_id: uuid.UUID
    tokens: int
    expected_tokens: int
    cost: Decimal
    expected_cost: Decimal
    storage: int
    expected_storage: int | None  # None: not derivable (no documents rows), left as it is
    unpriced: int = 0
    expected_unpriced: int = 0
    grants_consumed: int = 0
    expected_grants_consumed: int = 0
    grants_remaining: int = 0
    expected_grants_remaining: int = 0

    def describe(self) -> str:
        """One line: what differs and by how much."""
        parts = []
        if self.tokens != self.expected_tokens:
            parts.append(
                f"tokens {self.tokens} vs {self.expected_tokens} "
                f"({self.tokens - self.expected_tokens:+d})"
            )
        if self.cost != self.expected_cost:
            parts.append(f"cost {self.cost} vs {self.expected_cost}")
        if self.unpriced != self.expected_unpriced:
            parts.append(f"unpriced events {self.unpriced} vs {self.expected_unpriced}")
        if self.grants_consumed != self.expected_grants_consumed:
            parts.append(
                f"grants consumed {self.grants_consumed} vs ledger {self.expected_grants_consumed}"
            )
        if self.grants_remaining != self.expected_grants_remaining:
            parts.append(
                f"live grants {self.grants_remaining}"
                f" vs grant rows {self.expected_grants_remaining}"
            )
        if self.expected_storage is not None and self.storage != self.expected_storage:
            parts.append(
                f"storage {self.storage} vs {self.expected_storage} "
                f"({self.storage - self.expected_storage:+d} bytes)"
            )
        return f"{self.organization_id}: " + "; ".join(parts)


def _drift(row: object) -> Drift:
    r = row._mapping  # type: ignore[attr-defined]
    return Drift(
        r["organization_id"],
        int(r["tokens_used_period"]),
        int(r["expected_tokens"]),
        r["cost_usd_period"],
        r["expected_cost"],
        int(r["storage_used_bytes"]),
        None if r["expected_storage"] is None else int(r["expected_storage"]),
        int(r["unpriced_events_period"]),
        int(r["expected_unpriced"]),
        int(r["grants_consumed_period"]),
        int(r["expected_grants_consumed"]),
        int(r["grants_remaining"]),
        int(r["expected_grants_remaining"]),
    )


@dataclass(frozen=True)
class ReservedStorage:
    """An organization whose storage is only reserved (no documents rows): reported, not judged."""

    organization_id: uuid.UUID
    reserved_bytes: int

    def describe(self) -> str:
        """One line: the reserved total and why it is left alone."""
        return (
            f"{self.organization_id}: storage {self.reserved_bytes} bytes reserved, "
            "no documents rows to derive it from (not judged, never repaired)"
        )


async def reserved_only(db: DatabaseManager) -> list[ReservedStorage]:
    """Organizations with reserved storage but no documents rows, for the report."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(RESERVED_ONLY)
        return [ReservedStorage(org, int(reserved)) for org, reserved in rows]


async def find_drift(db: DatabaseManager) -> list[Drift]:
    """Every organization whose counters differ from its events and documents."""
    async with db.engine.connect() as conn:
        return [_drift(row) for row in await conn.execute(FIND)]


async def repair(db: DatabaseManager, drifts: list[Drift]) -> list[Drift]:
    """Lock the drifted rows, recompute under the lock, and write the true values."""
    if not drifts:
        return []
    orgs = sorted(d.organization_id for d in drifts)
    async with db.engine.begin() as conn:
        await conn.execute(LOCK, {"orgs": orgs})
        fixed = [_drift(row) for row in await conn.execute(RECHECK, {"orgs": orgs})]
        for d in fixed:
            await conn.execute(
                REPAIR,
                {
                    "org": d.organization_id,
                    "tokens": d.expected_tokens,
                    "cost": d.expected_cost,
                    "unpriced": d.expected_unpriced,
                    "storage": d.expected_storage,
                    "grants_consumed": d.expected_grants_consumed,
                },
            )
            await conn.execute(
                AUDIT,
                {
                    "org": d.organization_id,
                    "entity": str(d.organization_id),
                    "details": _details(d),
                },
            )
        if fixed:
            # The grants' cache, from the rows, under the same locks.
            raw = await conn.get_raw_connection()
            await refresh_grants(raw.driver_connection, [d.organization_id for d in fixed])
    return fixed


def _details(d: Drift) -> str:
    import json

    return json.dumps(
        {
            "tokens": [d.tokens, d.expected_tokens],
            "cost": [str(d.cost), str(d.expected_cost)],
            "storage": [d.storage, d.expected_storage],
            "unpriced_events": [d.unpriced, d.expected_unpriced],
            "grants_consumed": [d.grants_consumed, d.expected_grants_consumed],
            "grants_remaining": [d.grants_remaining, d.expected_grants_remaining],
        }
    )
