"""Retention of the small tables: rejects and relayed alerts older than their settings.

Each is deleted a chunk at a time, one short transaction per chunk (as the ended holds are,
biz2bricks_rollup.holds_reconcile), by the rollup run. An alert not yet relayed to Pub/Sub
stays whatever its age. Daily summaries are kept forever.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from sqlalchemy import TextClause, text

from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.retention import RetentionSettings

CHUNK: Final = 10_000
PRUNE_REJECTS = text(
    "DELETE FROM usage_event_rejects WHERE id = ANY(ARRAY(SELECT id FROM usage_event_rejects"
    " WHERE received_at < now() - make_interval(days => :days) LIMIT :chunk))"
)
PRUNE_ALERTS = text(
    "DELETE FROM usage_alerts WHERE id = ANY(ARRAY(SELECT id FROM usage_alerts"
    " WHERE published_at IS NOT NULL AND created_at < now() - make_interval(days => :days)"
    " LIMIT :chunk))"
)


@dataclass(frozen=True)
class Pruned:
    """Rows deleted by one prune."""

    rejects: int
    alerts: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


async def _prune(db: DatabaseManager, statement: TextClause, days: int) -> int:
    pruned = 0
    while True:
        async with db.engine.begin() as conn:
            deleted = (await conn.execute(statement, {"days": days, "chunk": CHUNK})).rowcount
        pruned += deleted
        if deleted < CHUNK:
            return pruned


async def prune_retained(db: DatabaseManager, settings: RetentionSettings) -> Pruned:
    """Delete rejects and relayed alerts past their retention."""
    return Pruned(
        await _prune(db, PRUNE_REJECTS, settings.rejects_days),
        await _prune(db, PRUNE_ALERTS, settings.alerts_days),
    )
