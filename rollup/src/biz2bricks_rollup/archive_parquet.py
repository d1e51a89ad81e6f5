"""The archive's file format: usage_events rows as typed Parquet, and their totals read back.

Layout (hive partitioning, which BigQuery external tables, DuckDB and pyarrow read with
``month`` as a column): ``usage_events/month=YYYY-MM/part-NNNNN.parquet``, the UTC month of
``occurred_at``; a month is split into parts of at most ``rows_per_file`` rows, numbered from
00000. The month is in the path, not in the file. Ids are strings (BigQuery has no UUID
type), times are UTC microseconds, tokens int64, ``cost_usd`` decimal(24,12) as in PostgreSQL,
``metadata`` JSON text. Every column of usage_events is kept (a test compares the two), so
a reader can leave out voided events (``voided_at``) and price by ``price_variant``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA: Final = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("organization_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("occurred_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("received_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("provider", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("cache_read_tokens", pa.int64(), nullable=False),
        pa.field("cache_write_tokens", pa.int64(), nullable=False),
        pa.field("cache_write_1h_tokens", pa.int64(), nullable=False),
        pa.field("cost_usd", pa.decimal128(24, 12)),
        pa.field("unpriced_reason", pa.string()),
        pa.field("pricing_id", pa.int32()),
        pa.field("operation", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("metadata", pa.string()),
        pa.field("reservation_id", pa.string()),
        # A voided event stays, counted nowhere; amends names the event a correction replaces.
        pa.field("voided_at", pa.timestamp("us", tz="UTC")),
        pa.field("amends", pa.string()),
        pa.field("price_variant", pa.string(), nullable=False),
        pa.field("web_search_requests", pa.int64(), nullable=False),
        # The partition key in PostgreSQL (the month the id carries; 0001-01-01: untimed).
        pa.field("id_month", pa.date32(), nullable=False),
    ]
)
# The SELECT list that yields SCHEMA's columns in order: uuids and JSON as text, so no value
# is converted in Python.
_AS_TEXT: Final = {
    "event_id",
    "organization_id",
    "user_id",
    "reservation_id",
    "amends",
    "metadata",
}
SELECT_COLUMNS: Final = ", ".join(
    f"CAST({f.name} AS text)" if f.name in _AS_TEXT else f.name for f in SCHEMA
)
ROOT: Final = "usage_events"


def month_prefix(month: date) -> str:
    """The hive directory of one month of ``occurred_at``."""
    return f"{ROOT}/month={month.year:04d}-{month.month:02d}/"


def part_key(month: date, number: int) -> str:
    """The key of one part of a month: deterministic, so a rerun overwrites, never adds."""
    return f"{month_prefix(month)}part-{number:05d}.parquet"


@dataclass(frozen=True)
class Totals:
    """What verification compares: rows, token sums and the cost sum."""

    rows: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.rows + other.rows,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
        )


def table_totals(table: pa.Table) -> Totals:
    """Totals of a table with SCHEMA's token and cost columns."""

    def total(name: str) -> Any:
        value = pc.sum(table.column(name)).as_py()
        return 0 if value is None else value

    return Totals(
        table.num_rows, int(total("input_tokens")), int(total("output_tokens")), total("cost_usd")
    )


def read_totals(data: bytes) -> Totals:
    """Totals of one stored Parquet file, read back from its bytes."""
    table = pq.read_table(io.BytesIO(data), columns=["input_tokens", "output_tokens", "cost_usd"])
    return table_totals(table)
