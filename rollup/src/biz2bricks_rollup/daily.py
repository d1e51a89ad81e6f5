"""What a rollup run does after the summaries, the same from the command and the trigger:
prune ended holds, record grant expiries, close due statements, create partitions ahead, prune
rejects and alerts past retention, and archive old months when ``USAGE_ARCHIVE_URL`` is set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.retention import RetentionSettings
from biz2bricks_rollup.archive import ArchiveSettings, MonthResult, archive
from biz2bricks_rollup.archive_store import open_store
from biz2bricks_rollup.books import StatementSettings, close_due_statements
from biz2bricks_rollup.grants import sweep_grants
from biz2bricks_rollup.holds_reconcile import HoldRetention, prune_ended_holds
from biz2bricks_rollup.partitions_ahead import create_partitions_ahead
from biz2bricks_rollup.retention_prune import Pruned, prune_retained


@dataclass(frozen=True)
class Housekeeping:
    """What the work after the summaries did."""

    holds_pruned: int
    hold_retention_days: int
    grant_tokens_expired: int
    statements_closed: int
    retained: Pruned
    archived: list[MonthResult] | None  # None: no USAGE_ARCHIVE_URL, nothing archived

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form, merged into the run's summary."""
        return {
            "holds_pruned": self.holds_pruned,
            "grant_tokens_expired": self.grant_tokens_expired,
            "statements_closed": self.statements_closed,
            **{f"{k}_pruned": v for k, v in self.retained.as_dict().items()},
            "archived": None if self.archived is None else [m.as_dict() for m in self.archived],
        }

    def describe(self) -> str:
        """One line for a terminal."""
        return (
            f"pruned {self.holds_pruned:,} token hold(s) ended over {self.hold_retention_days}"
            f" days ago, {self.retained.rejects:,} reject(s), {self.retained.alerts:,} alert(s);"
            f" {self.grant_tokens_expired:,} grant token(s) expired;"
            f" {self.statements_closed:,} statement(s) closed; "
            + (
                "archive off (USAGE_ARCHIVE_URL unset)"
                if self.archived is None
                else f"archived {len(self.archived)} month(s)"
            )
        )


def check_settings() -> None:
    """Read every setting the work after the summaries uses: a malformed one stops a server at
    start (ConfigurationError naming the variable), not at its first trigger."""
    RetentionSettings()
    HoldRetention()
    ArchiveSettings()
    StatementSettings()


async def after_summaries(db: DatabaseManager) -> Housekeeping:
    """Run the work after the summaries; see the module docstring."""
    retention, holds, settings = RetentionSettings(), HoldRetention(), ArchiveSettings()
    pruned = await prune_ended_holds(db, holds.days)
    expired = await sweep_grants(db)
    closed = await close_due_statements(db)
    await create_partitions_ahead(db)
    retained = await prune_retained(db, retention)
    archived = None
    if settings.url:  # without USAGE_ARCHIVE_URL, events stay in PostgreSQL
        archived = await archive(
            db,
            open_store(settings.url),
            retention_months=retention.events_months,
            rows_per_file=settings.rows_per_file,
        )
    return Housekeeping(pruned, holds.days, expired, closed, retained, archived)
