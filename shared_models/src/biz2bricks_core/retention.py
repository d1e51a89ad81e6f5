"""How long each kind of row stays in PostgreSQL, and the horizon of the events' retention.

Rule: usage_events keeps the current UTC month and the ``USAGE_EVENTS_RETENTION_MONTHS`` whole
months before it (the months still open to correction); every older month is written to the
Parquet archive, verified and removed (biz2bricks_rollup.archive). An event whose
``occurred_at`` lies before the horizon, or whose v7 id carries a month before it, is no longer
stored: the consumer keeps it as an ``older_than_retention`` reject (its month is archived or
about to be, and its id can no longer be checked for uniqueness). The consumer and the archive
compute the horizon with the same function; the archive lags it by ``ARCHIVE_GRACE`` so that a
consumer whose clock runs a little behind has already stopped storing a month it removes.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Final

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from biz2bricks_core.config import Settings

__all__ = [
    "ARCHIVE_GRACE",
    "OLDER_THAN_RETENTION",
    "RetentionSettings",
    "add_months",
    "month_of",
    "retention_horizon",
]

OLDER_THAN_RETENTION: Final = "older_than_retention"
ARCHIVE_GRACE: Final = timedelta(days=1)


class RetentionSettings(Settings):
    """Retention of events, rejects and alerts in PostgreSQL (summaries are kept forever)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    events_months: int = Field(
        default=13, ge=1, le=1200, validation_alias="USAGE_EVENTS_RETENTION_MONTHS"
    )
    rejects_days: int = Field(
        default=90, ge=1, le=36500, validation_alias="USAGE_REJECTS_RETENTION_DAYS"
    )
    # Published alerts only: an alert not yet relayed stays whatever its age.
    alerts_days: int = Field(
        default=400, ge=1, le=36500, validation_alias="USAGE_ALERTS_RETENTION_DAYS"
    )


def month_of(moment: datetime | date) -> date:
    """The first day of the UTC month of ``moment`` (a naive datetime is taken as UTC)."""
    if isinstance(moment, datetime) and moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def add_months(month: date, months: int) -> date:
    """The first day of the month ``months`` after (or before, if negative) ``month``."""
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def retention_horizon(now: datetime, months: int) -> date:
    """The first day of the oldest month still kept: ``months`` whole months before now's."""
    return add_months(month_of(now), -months)
