"""Usage rows as JSON, CSV and a text table: one shape for the HTTP API and the command line.

Instants are RFC 3339; cost is a decimal string (exact, never a float) or null when any event
of the row is unpriced; CSV has one column per group-by dimension and empty cells for null.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final

from biz2bricks_core.usage_windows import UsageRow

__all__ = ["COLUMNS", "cost_text", "row_json", "rows_csv", "rows_table"]

COLUMNS: Final = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_events",
)


def cost_text(value: Decimal | None) -> str | None:
    """A cost as a plain decimal string without trailing zeros; None stays None."""
    return None if value is None else format(value.normalize(), "f")


def row_json(row: UsageRow) -> dict[str, Any]:
    """One row as a JSON object."""
    return {
        "window_start": None if row.window_start is None else row.window_start.isoformat(),
        "window_end": None if row.window_end is None else row.window_end.isoformat(),
        "groups": row.groups,
        **{c: getattr(row, c) for c in COLUMNS if c != "cost_usd"},
        "cost_usd": cost_text(row.cost_usd),
    }


def _cells(row: UsageRow, group_by: Sequence[str]) -> list[str]:
    data = row_json(row)
    return [
        data["window_start"] or "",
        data["window_end"] or "",
        *(row.groups[d] or "" for d in group_by),
        *("" if data[c] is None else str(data[c]) for c in COLUMNS),
    ]


def rows_csv(rows: Sequence[UsageRow], group_by: Sequence[str]) -> str:
    """Rows as CSV with a header line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["window_start", "window_end", *group_by, *COLUMNS])
    for row in rows:
        writer.writerow(_cells(row, group_by))
    return out.getvalue()


def rows_table(rows: Sequence[UsageRow], group_by: Sequence[str], windowed: bool) -> str:
    """Rows as an aligned text table for a terminal (window columns only when windowed)."""
    header = [*(["window_start", "window_end"] if windowed else []), *group_by, *COLUMNS]
    body = [_cells(r, group_by)[0 if windowed else 2 :] for r in rows]
    body = [[cell if cell else "-" for cell in line] for line in body]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *body, strict=True)]
    numeric = len(header) - len(COLUMNS)
    lines = []
    for line in [header, *body]:
        cells = [
            cell.rjust(width) if n >= numeric else cell.ljust(width)
            for n, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
