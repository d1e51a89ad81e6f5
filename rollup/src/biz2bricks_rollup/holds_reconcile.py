"""Reconcile token holds: ``tokens_reserved`` against the hold rows, and expired holds; and
prune the rows of holds that ended (released or expired) long ago.

The counter must equal the sum of the organization's holds in state 'live'
(biz2bricks_core.holds). Holds past their ttl stop counting by themselves; they stay 'live' rows
until the organization's next reservation sweeps them, and are reported here meanwhile. A repair
locks the organization's usage_limits row first (as every writer of holds does), sweeps its
expired holds and sets the counter and the next expiry from the rows, with an audit row.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from sqlalchemy import text

from biz2bricks_core.config import Settings
from biz2bricks_core.counters import lock_counters_sql
from biz2bricks_core.database import DatabaseManager

HOLDS = """
SELECT l.organization_id, l.tokens_reserved,
    coalesce(h.live_tokens, 0) AS live_tokens,
    coalesce(h.expired_holds, 0) AS expired_holds,
    coalesce(h.expired_tokens, 0) AS expired_tokens
FROM usage_limits l
LEFT JOIN LATERAL (
    SELECT sum(tokens) AS live_tokens,
        count(*) FILTER (WHERE expires_at <= now()) AS expired_holds,
        sum(tokens) FILTER (WHERE expires_at <= now()) AS expired_tokens
    FROM usage_token_holds t WHERE t.organization_id = l.organization_id AND t.state = 'live'
) h ON true
WHERE {where}
ORDER BY l.organization_id
"""
NOTABLE = "l.tokens_reserved <> coalesce(h.live_tokens, 0) OR coalesce(h.expired_holds, 0) > 0"
FIND = text(HOLDS.format(where=NOTABLE))
LOCK = text(lock_counters_sql("SELECT unnest(CAST(:orgs AS uuid[]))"))
SWEEP = text(
    "UPDATE usage_token_holds SET state = 'expired', ended_at = now()"
    " WHERE organization_id = ANY(:orgs) AND state = 'live' AND expires_at <= now()"
)
RECOUNT = text(
    "UPDATE usage_limits l SET tokens_reserved = coalesce(h.tokens, 0), holds_next_expiry = h.next"
    " FROM (SELECT o AS organization_id,"
    "   (SELECT sum(tokens) FROM usage_token_holds t WHERE t.organization_id = o"
    "     AND t.state = 'live') AS tokens,"
    "   (SELECT min(expires_at) FROM usage_token_holds t WHERE t.organization_id = o"
    "     AND t.state = 'live') AS next"
    "   FROM unnest(CAST(:orgs AS uuid[])) AS o) h"
    " WHERE l.organization_id = h.organization_id"
)
# Ended holds no longer count anywhere; their rows stay for the retention (reconcile and
# operators can look at them), then the rollup run deletes them a chunk at a time, so the
# table holds the live holds and the recent past, not every call ever made. "state <> 'live'"
# is the predicate of the partial index ix_usage_token_holds_ended, which finds them.
PRUNE = text(
    "DELETE FROM usage_token_holds WHERE id = ANY(ARRAY(SELECT id FROM usage_token_holds"
    " WHERE state <> 'live' AND ended_at < now() - make_interval(days => :days)"
    " LIMIT :chunk))"
)
PRUNE_CHUNK = 10_000


class HoldRetention(Settings):
    """How long the rows of ended holds stay before the rollup run deletes them."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    days: int = Field(default=30, ge=1, le=3650, validation_alias="ROLLUP_HOLD_RETENTION_DAYS")


AUDIT = text(
    "INSERT INTO audit_logs (organization_id, action, entity_type, entity_id, details)"
    " VALUES (:org, 'holds.reconcile', 'usage_limits', :entity, CAST(:details AS jsonb))"
)


@dataclass(frozen=True)
class HoldState:
    """An organization whose reserved counter drifted, or that has expired holds to sweep."""

    organization_id: uuid.UUID
    reserved: int
    live_tokens: int
    expired_holds: int
    expired_tokens: int

    @property
    def drifted(self) -> bool:
        """The counter differs from its hold rows."""
        return self.reserved != self.live_tokens

    def describe(self) -> str:
        """One line: the drift, and the expired holds that no longer count."""
        parts = []
        if self.drifted:
            parts.append(
                f"tokens_reserved {self.reserved} vs live holds {self.live_tokens} "
                f"({self.reserved - self.live_tokens:+d})"
            )
        if self.expired_holds:
            parts.append(
                f"{self.expired_holds} expired hold(s) of {self.expired_tokens} tokens"
                " (no longer counted; swept by --fix or the next reservation)"
            )
        return f"{self.organization_id}: " + "; ".join(parts)


async def find_hold_states(db: DatabaseManager) -> list[HoldState]:
    """Organizations whose reserved counter drifted or that hold expired holds."""
    async with db.engine.connect() as conn:
        return [
            HoldState(
                r.organization_id,
                int(r.tokens_reserved),
                int(r.live_tokens),
                int(r.expired_holds),
                int(r.expired_tokens),
            )
            for r in await conn.execute(FIND)
        ]


async def repair_holds(db: DatabaseManager, states: list[HoldState]) -> int:
    """Sweep expired holds and set each counter from its rows, under the row lock."""
    if not states:
        return 0
    orgs = sorted(s.organization_id for s in states)
    async with db.engine.begin() as conn:
        await conn.execute(LOCK, {"orgs": orgs})
        await conn.execute(SWEEP, {"orgs": orgs})
        await conn.execute(RECOUNT, {"orgs": orgs})
        for s in states:
            details = {
                "tokens_reserved": [s.reserved, s.live_tokens - s.expired_tokens],
                "expired_holds": s.expired_holds,
            }
            await conn.execute(
                AUDIT,
                {
                    "org": s.organization_id,
                    "entity": str(s.organization_id),
                    "details": json.dumps(details),
                },
            )
    return len(orgs)


async def prune_ended_holds(db: DatabaseManager, retention_days: int) -> int:
    """Delete the rows of holds that ended more than ``retention_days`` ago; how many.

    One short transaction per chunk of PRUNE_CHUNK rows, so a first run over a large backlog
    neither holds locks for long nor builds one huge transaction.
    """
    pruned = 0
    while True:
        async with db.engine.begin() as conn:
            deleted = (
                await conn.execute(PRUNE, {"days": retention_days, "chunk": PRUNE_CHUNK})
            ).rowcount
        pruned += deleted
        if deleted < PRUNE_CHUNK:
            return pruned
