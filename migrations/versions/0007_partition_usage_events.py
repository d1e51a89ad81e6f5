"""usage_events partitioned by the month its event id carries; the archive's manifest.

- usage_events becomes a table partitioned by RANGE (id_month), id_month being
  ``event_id_month(event_id)`` (biz2bricks_core.event_ids; the design is in
  biz2bricks_core.event_partitions). Primary key (event_id, id_month).
- Conversion: the old table is renamed, the partitioned one created with a partition for
  every month its rows' ids carry (every v4 id goes to usage_events_untimed), the current
  month and the next two; the rows are copied in one INSERT .. SELECT, the secondary indexes
  built afterwards (faster than maintained row by row), the counts compared, and the old
  table dropped, all in this migration's transaction: it commits with every row or not at
  all. Writers wait on the table lock meanwhile: stop the consumers first (their messages
  wait in the subscription; README: Roll-out order). Measured here: see the README
  (Partitions and retention) for the time per million rows.
- usage_event_archive: one row per month of occurred_at written to the Parquet archive,
  verified, and (removed_at) removed from usage_events (biz2bricks_rollup.archive).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 09:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from biz2bricks_core.event_ids import UNTIMED, event_id_month_sql
from biz2bricks_core.event_partitions import AHEAD_MONTHS, create_partition_sql
from biz2bricks_core.retention import add_months, month_of

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    "event_id, organization_id, user_id, occurred_at, received_at, provider, model,"
    " input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
    " cache_write_1h_tokens, cost_usd, unpriced_reason, pricing_id, operation, request_id,"
    " metadata, reservation_id"
)
INDEXES = (
    ("ix_usage_events_org_occurred", "(organization_id, occurred_at)"),
    ("ix_usage_events_received_brin", "USING brin (received_at)"),
    ("ix_usage_events_occurred_brin", "USING brin (occurred_at)"),
    ("ix_usage_events_unpriced", "(occurred_at) WHERE cost_usd IS NULL"),
)


def _rename_old(suffix: str) -> None:
    op.execute(f"ALTER TABLE usage_events RENAME TO usage_events{suffix}")
    op.execute(
        f"ALTER TABLE usage_events{suffix} RENAME CONSTRAINT pk_usage_events"
        f" TO pk_usage_events{suffix}"
    )
    for name, _ in INDEXES:
        op.execute(f"ALTER INDEX {name} RENAME TO {name}{suffix}")


def _create_indexes() -> None:
    for name, definition in INDEXES:
        using = definition if definition.startswith("USING") else f"USING btree {definition}"
        op.execute(f"CREATE INDEX {name} ON usage_events {using}")


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
    _rename_old("_0006")
    op.execute(
        "CREATE TABLE usage_events (LIKE usage_events_0006 INCLUDING DEFAULTS,"
        " id_month date NOT NULL,"
        " CONSTRAINT pk_usage_events PRIMARY KEY (event_id, id_month))"
        " PARTITION BY RANGE (id_month)"
    )
    bind = op.get_bind()
    key = event_id_month_sql("event_id")
    months = {r[0] for r in bind.execute(sa.text(f"SELECT DISTINCT {key} FROM usage_events_0006"))}
    current = month_of(datetime.now(UTC))
    months |= {UNTIMED, *(add_months(current, n) for n in range(AHEAD_MONTHS + 1))}
    for month in sorted(months):
        for statement in create_partition_sql(month):
            op.execute(statement)
    bind.execute(
        sa.text(
            f"INSERT INTO usage_events ({COLUMNS}, id_month)"
            f" SELECT {COLUMNS}, {key} FROM usage_events_0006"
        )
    )
    before = bind.execute(sa.text("SELECT count(*) FROM usage_events_0006")).scalar_one()
    after = bind.execute(sa.text("SELECT count(*) FROM usage_events")).scalar_one()
    if before != after:  # in this transaction: a mistake fails loudly and loses nothing
        raise RuntimeError(f"usage_events copy: {before} rows before, {after} after")
    _create_indexes()
    op.execute("DROP TABLE usage_events_0006")
    op.create_table(
        "usage_event_archive",
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("exported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("month", name=op.f("pk_usage_event_archive")),
    )


def downgrade() -> None:
    op.drop_table("usage_event_archive")
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
    _rename_old("_0007")
    op.execute(
        "CREATE TABLE usage_events (LIKE usage_events_0007 INCLUDING DEFAULTS,"
        " CONSTRAINT pk_usage_events PRIMARY KEY (event_id))"
    )
    op.execute("ALTER TABLE usage_events DROP COLUMN id_month")
    bind = op.get_bind()
    bind.execute(
        sa.text(f"INSERT INTO usage_events ({COLUMNS}) SELECT {COLUMNS} FROM usage_events_0007")
    )
    _create_indexes()
    op.execute("DROP TABLE usage_events_0007")
