"""The archive: months beyond retention to verified Parquet, then out of PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from biz2bricks_consumer.batching import build_batch
from biz2bricks_consumer.partitions import PartitionGuard
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import DatabaseManager
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_core.retention import (
    ARCHIVE_GRACE,
    RetentionSettings,
    add_months,
    retention_horizon,
)
from biz2bricks_devtools.localservices import LocalService
from biz2bricks_rollup.archive import archive, archived_before, months_to_archive
from biz2bricks_rollup.archive_parquet import SCHEMA, SELECT_COLUMNS
from biz2bricks_rollup.archive_store import GcsStore, LocalStore, open_store
from biz2bricks_rollup.reconcile import find_drift
from biz2bricks_rollup.retention_prune import prune_retained
from biz2bricks_rollup.rollup import days_between, run_rollup
from tests.factories import make_event, message_for
from tests.rollup.archive_support import months_ago, rows_before, seed, table_snapshot

HORIZON_MONTHS = 13


def horizon() -> datetime:
    month = retention_horizon(datetime.now(UTC) - ARCHIVE_GRACE, HORIZON_MONTHS)
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def files_of(root: Path, pattern: str) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob(pattern)}


def run_archive(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "biz2bricks_rollup", "archive", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def kill_9_once(env: dict[str, str], root: Path, written: str) -> None:
    """Start the archive and SIGKILL it as soon as a file named ``written`` exists."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "biz2bricks_rollup", "archive"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not list(root.rglob(written)) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def parquet_rows(root: Path) -> list[tuple[object, ...]]:
    """What DuckDB reads from the archive, with the month from the hive path."""
    glob = str(root / "usage_events" / "*" / "*.parquet")
    rows = duckdb.sql(
        "SELECT event_id, input_tokens, output_tokens, cost_usd, CAST(month AS VARCHAR)"
        f" FROM read_parquet('{glob}', hive_partitioning = true)"
    ).fetchall()
    return sorted(rows)


async def partitions(db: DatabaseManager) -> set[str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'usage_events'::regclass"
            )
        )
        return {r[0] for r in rows}


async def test_archive_round_trip_keeps_every_row_once_and_changes_no_summary(
    archive_db: DatabaseManager, tmp_path: Path
) -> None:
    # Given events of two months beyond retention (v7, v4 and late ones) and of now,
    # rolled up and reconciled
    db = archive_db
    await seed(db, [20, 19], per_month=120)
    old_days = days_between(months_ago(20), add_months(months_ago(19), 1))[:-1]
    await run_rollup(db, old_days)
    summaries, drift = await table_snapshot(db, "usage_daily_summaries"), await find_drift(db)
    leaving = await rows_before(db, horizon().date())
    assert len(leaving) == 240
    before_parts = await partitions(db)

    # When archived into a local directory
    results = await archive(
        db, LocalStore(tmp_path), retention_months=HORIZON_MONTHS, rows_per_file=100
    )

    # Then the Parquet files hold exactly the rows removed, month as a column (DuckDB)
    expected = [(str(i), a, b, c, m) for i, a, b, c, m in leaving]
    assert parquet_rows(tmp_path) == sorted(
        (e, a, b, Decimal(c) if c is not None else None, m) for e, a, b, c, m in expected
    )
    assert await rows_before(db, horizon().date()) == []
    assert sum(r.rows for r in results) == 240
    assert [p.name for p in sorted((tmp_path / "usage_events").iterdir())][:2] == [
        f"month={months_ago(20):%Y-%m}",
        f"month={months_ago(19):%Y-%m}",
    ]
    # ... the old months' partitions are gone whole, the untimed and current ones stay
    dropped = before_parts - await partitions(db)
    # (the late events of month -19 carry ids of month -18: that partition empties too)
    expected_drop = {f"usage_events_y{months_ago(n):%Y}m{months_ago(n):%m}" for n in (20, 19, 18)}
    assert dropped == expected_drop
    assert "usage_events_untimed" in await partitions(db)
    # ... summaries and reconcile are unchanged
    assert await table_snapshot(db, "usage_daily_summaries") == summaries
    assert await find_drift(db) == drift
    # ... pyarrow reads the typed columns
    part = next((tmp_path / "usage_events").glob("*/part-00000.parquet"))
    schema = pq.read_schema(part)
    assert (str(schema.field("cost_usd").type), str(schema.field("event_id").type)) == (
        "decimal128(24, 12)",
        "string",
    )

    # When run again: nothing to do, nothing changes
    files = files_of(tmp_path, "*.parquet")
    assert await archive(db, LocalStore(tmp_path), retention_months=HORIZON_MONTHS) == []
    assert files_of(tmp_path, "*.parquet") == files
    # ... and the first month still in PostgreSQL is the horizon (the rollup run refuses days
    # before it)
    assert await archived_before(db) == add_months(horizon().date(), 0)


async def test_a_lone_archive_rolls_up_the_months_due_days_before_the_events_leave(
    archive_db: DatabaseManager, tmp_path: Path
) -> None:
    # Given a month beyond retention, rolled up, then one more of its events received
    db = archive_db
    await seed(db, [21], per_month=60)
    month = months_ago(21)
    days = days_between(month, add_months(month, 1))[:-1]
    await run_rollup(db, days)
    book = await load_price_book(db, ModelNames())
    writer = BatchWriter(db, lambda: book, PartitionGuard(db, 1200))
    async with db.engine.connect() as conn:
        org = (await conn.execute(text("SELECT organization_id FROM usage_limits"))).first()
    assert org is not None
    noon = datetime.combine(days[3], datetime.min.time(), UTC) + timedelta(hours=12)
    late = make_event(org[0], occurred_at=noon, input_tokens=7_000)
    await writer.write(build_batch([message_for(late)]))
    leaving = [r for r in await rows_before(db, horizon().date()) if r[4] == f"{month:%Y-%m}"]
    # When the archive runs alone (no `run` before it)
    await archive(db, LocalStore(tmp_path), retention_months=HORIZON_MONTHS)
    # Then the month's events are gone, and its summaries, which stay, count every one of them
    assert await rows_before(db, horizon().date()) == []
    async with db.engine.connect() as conn:
        counted = (
            await conn.execute(
                text(
                    "SELECT sum(request_count), sum(input_tokens) FROM usage_daily_summaries"
                    " WHERE day >= :first AND day <= :last"
                ),
                {"first": days[0], "last": days[-1]},
            )
        ).one()
    assert (counted[0], counted[1]) == (len(leaving), sum(r[1] for r in leaving))


async def test_the_parquet_files_keep_every_column_of_the_rows_removed(
    archive_db: DatabaseManager, tmp_path: Path
) -> None:
    # Given a month beyond retention, one event voided, one amending it, in a price context
    db = archive_db
    await seed(db, [15], per_month=20)
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE usage_events SET voided_at = occurred_at + interval '1 hour',"
                " price_variant = 'processing=batch', web_search_requests = 3,"
                " amends = event_id WHERE occurred_at < :h AND input_tokens IN (101, 102)"
            ),
            {"h": horizon()},
        )
        columns = await conn.execute(
            text(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'usage_events' AND table_schema = current_schema()"
            )
        )
        table_columns = {r[0] for r in columns}
        expected = await conn.execute(
            text(f"SELECT {SELECT_COLUMNS} FROM usage_events WHERE occurred_at < :h"),
            {"h": horizon()},
        )
        before = sorted(tuple(r) for r in expected)
    # When archived
    await archive(db, LocalStore(tmp_path), retention_months=HORIZON_MONTHS)
    # Then the files have every column of the table, each value as it was
    part = next((tmp_path / "usage_events").glob("*/part-00000.parquet"))
    table = pq.read_table(part)
    assert set(table.column_names) == table_columns
    rows = sorted(tuple(r.values()) for r in table.to_pylist())
    assert rows == before
    assert sum(r[SCHEMA.names.index("voided_at")] is not None for r in rows) == 2


async def test_archive_to_gcs_through_the_emulator(
    archive_db: DatabaseManager, storage_emulator: LocalService
) -> None:
    # Given a bucket in the GCS emulator and one month beyond retention
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="emulator", credentials=AnonymousCredentials())
    bucket = f"b2b-archive-{os.getpid()}-{time.monotonic_ns()}"
    client.create_bucket(bucket)
    await seed(archive_db, [16], per_month=60)
    leaving = await rows_before(archive_db, horizon().date())

    # When archived to gs://bucket/prefix
    store = open_store(f"gs://{bucket}/history")
    assert isinstance(store, GcsStore)
    results = await archive(archive_db, store, retention_months=HORIZON_MONTHS, rows_per_file=25)

    # Then the objects sit in the hive layout and hold the rows removed
    keys = store.list("usage_events/")
    month = f"{months_ago(16):%Y-%m}"
    assert keys == [f"usage_events/month={month}/part-0000{n}.parquet" for n in range(3)]
    names = {b.name for b in client.list_blobs(bucket)}
    assert names == {f"history/{k}" for k in keys}
    ids = sorted(
        i
        for key in keys
        for i in pq.read_table(pa_buffer(store.get(key)), columns=["event_id"])
        .column("event_id")
        .to_pylist()
    )
    assert ids == sorted(str(r[0]) for r in leaving)
    assert sum(r.rows for r in results) == len(leaving) == 60
    assert await rows_before(archive_db, horizon().date()) == []


def pa_buffer(data: bytes) -> object:
    import pyarrow as pa

    return pa.BufferReader(data)


@pytest.mark.fault
async def test_a_kill_9_in_the_middle_loses_and_duplicates_nothing_after_a_rerun(
    archive_db: DatabaseManager, archive_database_url: str, tmp_path: Path
) -> None:
    # Given six months beyond retention, written as many small files
    await seed(archive_db, [22, 21, 20, 19, 18, 17], per_month=300)
    leaving = await rows_before(archive_db, horizon().date())
    env = {
        **os.environ,
        "DATABASE_URL": archive_database_url,
        "USAGE_ARCHIVE_URL": str(tmp_path),
        "USAGE_ARCHIVE_ROWS_PER_FILE": "20",
    }
    # When the archive is killed with SIGKILL once its first files exist
    kill_9_once(env, tmp_path, "part-00003.parquet")
    # Then a rerun completes, and the files hold every removed row exactly once
    done = run_archive(env)
    assert done.returncode == 0, done.stderr
    archived = [r[0] for r in parquet_rows(tmp_path)]
    assert len(archived) == len(set(archived)) == len(leaving) == 1800
    assert sorted(archived) == sorted(str(r[0]) for r in leaving)
    assert await rows_before(archive_db, horizon().date()) == []
    assert files_of(tmp_path, "*.partial") == {}


async def test_dry_run_prints_and_changes_nothing(
    archive_db: DatabaseManager, archive_database_url: str, tmp_path: Path
) -> None:
    await seed(archive_db, [15], per_month=30)
    before = await rows_before(archive_db, horizon().date())
    env = {**os.environ, "DATABASE_URL": archive_database_url, "USAGE_ARCHIVE_URL": str(tmp_path)}
    done = run_archive(env, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"would archive {months_ago(15):%Y-%m}: 30 event(s)" in done.stdout
    assert await rows_before(archive_db, horizon().date()) == before
    assert files_of(tmp_path, "*.parquet") == {}


async def test_a_dry_run_needs_no_store_and_a_real_run_names_the_missing_setting(
    archive_db: DatabaseManager, archive_database_url: str
) -> None:
    await seed(archive_db, [15], per_month=30)
    before = await rows_before(archive_db, horizon().date())
    env = {**os.environ, "DATABASE_URL": archive_database_url}
    env.pop("USAGE_ARCHIVE_URL", None)
    # A dry run only counts: it runs, and says what a real run would need
    dry = run_archive(env, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would archive {months_ago(15):%Y-%m}: 30 event(s)" in dry.stdout
    assert "USAGE_ARCHIVE_URL is not set" in dry.stderr
    # A real run refuses in one line naming the variable, and removes nothing
    real = run_archive(env)
    assert real.returncode == 2, real.stderr
    assert "USAGE_ARCHIVE_URL" in real.stderr
    assert "Traceback" not in real.stderr
    assert await rows_before(archive_db, horizon().date()) == before


async def test_before_may_not_reach_into_retention(archive_db: DatabaseManager) -> None:
    with pytest.raises(ValueError, match="still within retention"):
        await months_to_archive(archive_db, HORIZON_MONTHS, months_ago(2))
    assert await months_to_archive(archive_db, HORIZON_MONTHS, months_ago(30)) == []


async def test_rejects_and_relayed_alerts_are_pruned_after_their_retention(
    archive_db: DatabaseManager,
) -> None:
    # Given a reject past the 90 days and one within them
    async with archive_db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO usage_event_rejects (reason, reason_code, raw_data, received_at)"
                " VALUES ('x', 'invalid', '\\x00', now() - interval '91 days'),"
                " ('y', 'invalid', '\\x00', now() - interval '89 days')"
            )
        )
    # When pruned with the defaults
    pruned = await prune_retained(archive_db, RetentionSettings())
    # Then only the old reject went
    assert pruned.rejects == 1
    async with archive_db.engine.connect() as conn:
        left = await conn.execute(text("SELECT reason FROM usage_event_rejects"))
        assert [r[0] for r in left] == ["y"]


def test_a_month_that_is_not_yyyy_mm_is_refused_naming_the_format() -> None:
    for wrong in ("2024-13", "2024-1", "2024-01-01", "last"):
        done = subprocess.run(
            [sys.executable, "-m", "biz2bricks_rollup", "archive", "--before", wrong],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert f"argument --before: expected a month as YYYY-MM, got '{wrong}'" in done.stderr
