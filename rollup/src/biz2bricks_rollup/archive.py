"""Retention of usage_events: every whole month before the horizon goes to Parquet, verified,
and only then leaves PostgreSQL (promise 10: never a silent delete).

A month is a UTC month of ``occurred_at`` (the month of the bill and of the summaries, which
stay in PostgreSQL forever). Months are archived oldest first, each in four steps:

1. Export: the month's rows, read in one REPEATABLE READ snapshot, are written as parts of at
   most ``rows_per_file`` rows (biz2bricks_rollup.archive_parquet) under deterministic keys;
   keys of the month left by an earlier attempt beyond the new parts are deleted.
2. Verify: every file under the month's prefix is read back; its row count, token sums and
   cost sum must equal what was exported.
3. Record: the totals go to ``usage_event_archive`` (removed_at NULL).
4. Remove, in one transaction holding an EXCLUSIVE lock on usage_events (reads go on, inserts
   wait): the month's totals are counted again and must equal the verified ones (else
   nothing is removed and the month is exported again); the month's rows in partitions that
   also hold other months (late events, the untimed partition) are deleted; last, partitions
   of id months up to this month that hold nothing but this month's rows are detached and
   dropped (the disk is freed at once). DETACH takes an ACCESS EXCLUSIVE lock, so reads wait
   only for the detach, the drop and the commit, not for the counting and deleting before.

Before step 1, the month's days that are due (events received or corrected since their last
rollup) are rolled up: the summaries, which stay, hold every event that leaves.

A kill at any point loses nothing: before step 4 commits, every row is still in PostgreSQL
and the next run redoes the month, overwriting the same keys; after it, the files are
verified and the month is skipped. A second run finds nothing to do. Only months before the
horizon that the consumer already refuses (biz2bricks_core.retention, lagged by
ARCHIVE_GRACE) are archived, so no event of a removed month is stored again: a late one
becomes an ``older_than_retention`` reject.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from biz2bricks_core.config import Settings
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import Biz2BricksError
from biz2bricks_core.event_ids import UNTIMED
from biz2bricks_core.event_partitions import (
    detach_and_drop_sql,
    existing_partitions,
    partition_name,
)
from biz2bricks_core.retention import ARCHIVE_GRACE, add_months, month_of, retention_horizon
from biz2bricks_rollup.archive_parquet import (
    SCHEMA,
    SELECT_COLUMNS,
    Totals,
    month_prefix,
    part_key,
    read_totals,
    table_totals,
)
from biz2bricks_rollup.archive_store import ArchiveStore
from biz2bricks_rollup.rollup import due_days, run_rollup

log = logging.getLogger(__name__)

FETCH_ROWS: Final = 50_000  # one Parquet row group per fetch: memory stays bounded
ATTEMPTS: Final = 3
IN_MONTH = "occurred_at >= $1 AND occurred_at < $2"
MONTH_TOTALS = (
    "SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
    f" coalesce(sum(cost_usd), 0) FROM usage_events WHERE {IN_MONTH}"
)
RECORD = (
    "INSERT INTO usage_event_archive (month, rows, input_tokens, output_tokens, cost_usd,"
    " files, location, exported_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now())"
    " ON CONFLICT (month) DO UPDATE SET rows = excluded.rows,"
    " input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,"
    " cost_usd = excluded.cost_usd, files = excluded.files, location = excluded.location,"
    " exported_at = excluded.exported_at, removed_at = NULL"
)
LAST_REMOVED = "SELECT max(month) FROM usage_event_archive WHERE removed_at IS NOT NULL"


class ArchiveError(Biz2BricksError):
    """The archive could not be verified, or the month kept changing; nothing was removed."""


class ArchiveSettings(Settings):
    """Where the archive goes, and how large its files are."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    url: str | None = Field(default=None, validation_alias="USAGE_ARCHIVE_URL")
    rows_per_file: int = Field(
        default=1_000_000, ge=1, validation_alias="USAGE_ARCHIVE_ROWS_PER_FILE"
    )


@dataclass(frozen=True)
class MonthResult:
    """What archiving one month did (or, in a dry run, would do)."""

    month: date
    rows: int
    files: int
    parquet_bytes: int
    dropped: tuple[str, ...]
    deleted: int
    seconds: float
    dry_run: bool = False

    def describe(self) -> str:
        """One line for the operator."""
        label = f"{self.month:%Y-%m}"
        if self.dry_run:
            return f"would archive {label}: {self.rows:,} event(s)"
        return (
            f"archived {label}: {self.rows:,} event(s) in {self.files} file(s), "
            f"{self.parquet_bytes / 1e6:.1f} MB, verified; dropped partitions "
            f"{', '.join(self.dropped) or 'none'}, deleted {self.deleted:,} row(s) elsewhere, "
            f"{self.seconds:.1f}s"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "month": f"{self.month:%Y-%m}",
            "rows": self.rows,
            "files": self.files,
            "parquet_bytes": self.parquet_bytes,
            "dropped": list(self.dropped),
            "deleted": self.deleted,
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
        }


def _bounds(month: date) -> tuple[datetime, datetime]:
    end = add_months(month, 1)
    return (
        datetime(month.year, month.month, 1, tzinfo=UTC),
        datetime(end.year, end.month, 1, tzinfo=UTC),
    )


async def archived_before(db: DatabaseManager) -> date | None:
    """The first month still in PostgreSQL after the archive, or None if none was removed."""
    async with db.driver() as conn:
        last = await conn.fetchval(LAST_REMOVED)
    return None if last is None else add_months(last, 1)


async def months_to_archive(
    db: DatabaseManager, retention_months: int, before: date | None, now: datetime | None = None
) -> list[date]:
    """The months of occurred_at to archive now, oldest first.

    ``before`` (``--before``) may stop earlier than the horizon, never later: the months after
    it are still open to correction.
    """
    horizon = retention_horizon((now or datetime.now(UTC)) - ARCHIVE_GRACE, retention_months)
    if before is not None and before > horizon:
        raise ValueError(
            f"--before {before:%Y-%m} would archive months still within retention "
            f"(USAGE_EVENTS_RETENTION_MONTHS={retention_months}: the oldest month kept is "
            f"{horizon:%Y-%m})"
        )
    limit = before or horizon
    start = await archived_before(db)
    if start is None:  # first run: where the events start (a full scan, once)
        async with db.driver() as conn:
            oldest = await conn.fetchval("SELECT min(occurred_at) FROM usage_events")
        if oldest is None:
            return []
        start = month_of(oldest)
    months = []
    while start < limit:
        months.append(start)
        start = add_months(start, 1)
    return months


async def archive(
    db: DatabaseManager,
    store: ArchiveStore | None,
    *,
    retention_months: int,
    before: date | None = None,
    dry_run: bool = False,
    rows_per_file: int = 1_000_000,
    progress: Callable[[MonthResult], None] | None = None,
) -> list[MonthResult]:
    """Archive every month due (see the module docstring); what each month did. A dry run
    only counts each month's rows, so it needs no ``store``."""
    if store is None and not dry_run:
        raise ValueError("archive needs a store unless it is a dry run")
    results = []
    months = await months_to_archive(db, retention_months, before)
    if months and not dry_run:
        await _summaries_first(db, set(months))
    for month in months:
        if dry_run:
            async with db.driver() as conn:
                rows = await conn.fetchval(
                    f"SELECT count(*) FROM usage_events WHERE {IN_MONTH}", *_bounds(month)
                )
            result = MonthResult(month, rows, 0, 0, (), 0, 0.0, dry_run=True)
        else:
            assert store is not None  # checked above
            result = await archive_month(db, store, month, rows_per_file)
        if progress is not None:
            progress(result)
        results.append(result)
    return results


async def _summaries_first(db: DatabaseManager, months: set[date]) -> None:
    """Roll up the days of ``months`` that are due (events received or corrected since their
    last rollup): the summaries stay in PostgreSQL, so they must hold every event before the
    events leave. ``biz2bricks-rollup run`` has just done so; a lone ``archive`` may not."""
    async with db.engine.connect() as conn:
        due = [day for day in await due_days(conn) if month_of(day) in months]
    if due:
        log.info("archive.rollup_first", extra={"days": len(due)})
        await run_rollup(db, due, wait=True)


async def archive_month(
    db: DatabaseManager, store: ArchiveStore, month: date, rows_per_file: int
) -> MonthResult:
    """Export, verify, record and remove one month; retried while the month changes."""
    started = time.monotonic()
    for _ in range(ATTEMPTS):
        exported, keys, size = await _export(db, store, month, rows_per_file)
        stored = _verify(store, month, keys)
        if stored != exported:
            raise ArchiveError(
                f"{month:%Y-%m}: the files under {store.location}/{month_prefix(month)} hold "
                f"{stored}, the export wrote {exported}; nothing removed"
            )
        async with db.driver() as conn:
            await conn.execute(
                RECORD,
                month,
                exported.rows,
                exported.input_tokens,
                exported.output_tokens,
                exported.cost_usd,
                len(keys),
                store.location,
            )
        removed = await _remove(db, month, exported)
        if removed is not None:
            dropped, deleted = removed
            seconds = time.monotonic() - started
            result = MonthResult(month, exported.rows, len(keys), size, dropped, deleted, seconds)
            log.info("archive.month", extra=result.as_dict())
            return result
        log.warning("archive.month_changed", extra={"month": f"{month:%Y-%m}"})
    raise ArchiveError(f"{month:%Y-%m} kept changing during {ATTEMPTS} exports; nothing removed")


async def _export(
    db: DatabaseManager, store: ArchiveStore, month: date, rows_per_file: int
) -> tuple[Totals, list[str], int]:
    totals, size = Totals(), 0
    keys: list[str] = []
    query = f"SELECT {SELECT_COLUMNS} FROM usage_events WHERE {IN_MONTH}"
    with tempfile.TemporaryDirectory(prefix="b2b-archive-") as scratch:
        async with db.driver() as conn, conn.transaction(isolation="repeatable_read"):
            cursor = await conn.cursor(query, *_bounds(month))
            writer: pq.ParquetWriter | None = None
            in_part = 0
            while rows := await cursor.fetch(min(FETCH_ROWS, rows_per_file)):
                if writer is None or in_part + len(rows) > rows_per_file:
                    size += _close_part(writer, store, month, keys, Path(scratch))
                    writer = pq.ParquetWriter(
                        Path(scratch) / "part.parquet", SCHEMA, compression="zstd"
                    )
                    in_part = 0
                table = _table(rows)
                writer.write_table(table)
                totals += table_totals(table)
                in_part += len(rows)
            size += _close_part(writer, store, month, keys, Path(scratch))
    for stale in set(store.list(month_prefix(month))) - set(keys):
        store.delete(stale)  # parts or partial files of an earlier attempt
    return totals, keys, size


def _close_part(
    writer: pq.ParquetWriter | None,
    store: ArchiveStore,
    month: date,
    keys: list[str],
    scratch: Path,
) -> int:
    if writer is None:
        return 0
    writer.close()
    key = part_key(month, len(keys))
    store.put(key, scratch / "part.parquet")
    keys.append(key)
    return (scratch / "part.parquet").stat().st_size


def _table(rows: list[Any]) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, SCHEMA, strict=True)], schema=SCHEMA
    )


def _verify(store: ArchiveStore, month: date, keys: list[str]) -> Totals:
    """Totals of every file under the month's prefix, read back from the store."""
    listed = store.list(month_prefix(month))
    if sorted(listed) != sorted(keys):
        raise ArchiveError(f"{month:%Y-%m}: expected files {keys}, the store lists {listed}")
    total = Totals()
    for key in listed:
        total += read_totals(store.get(key))
    return total


async def _remove(
    db: DatabaseManager, month: date, verified: Totals
) -> tuple[tuple[str, ...], int] | None:
    """Remove the month's rows if they still total ``verified``; None (nothing done) if not."""
    start, end = _bounds(month)
    async with db.driver() as conn, conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '10s'")
        await conn.execute("LOCK TABLE usage_events IN EXCLUSIVE MODE")
        rows, tokens_in, tokens_out, cost = await conn.fetchrow(MONTH_TOTALS, start, end)
        if Totals(rows, int(tokens_in), int(tokens_out), cost) != verified:
            return None
        kept: list[date] = []
        dropped: list[date] = []
        for key in sorted(await existing_partitions(conn)):
            name = partition_name(key)
            # Only a partition that holds nothing but this (verified) month's rows goes whole.
            whole = (
                key != UNTIMED
                and key <= month
                and not await conn.fetchval(
                    f"SELECT EXISTS (SELECT 1 FROM {name} WHERE NOT ({IN_MONTH}))", start, end
                )
            )
            (dropped if whole else kept).append(key)
        deleted = 0
        for key in kept:  # the month's rows left elsewhere (late events, the untimed partition)
            status = await conn.execute(
                f"DELETE FROM {partition_name(key)} WHERE {IN_MONTH}", start, end
            )
            deleted += int(status.split()[-1])
        # Last: DETACH takes ACCESS EXCLUSIVE on usage_events (reads wait too) until commit.
        for key in dropped:
            for statement in detach_and_drop_sql(key):
                await conn.execute(statement)
        await conn.execute(
            "UPDATE usage_event_archive SET removed_at = now() WHERE month = $1", month
        )
    return tuple(partition_name(key) for key in dropped), deleted
