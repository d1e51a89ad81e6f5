"""Plain-text tables and a progress bar for the demo (no terminal library needed)."""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

# Cells that read as amounts (right-aligned): 1,234  $0.0123  45%  -  unlimited
_AMOUNT = re.compile(r"^(\$?-?[\d,]+(\.\d+)?%?|-|unlimited)$")


def table(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    wrap: Mapping[int, int] | None = None,
) -> None:
    """Print a titled table (see ``render_table``)."""
    print()
    print("\n".join(render_table(title, headers, rows, wrap)))


def render_table(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    wrap: Mapping[int, int] | None = None,
) -> list[str]:
    """A titled table with aligned columns, amounts right-aligned; ``wrap`` maps a column to
    the width its text wraps at, between words (a word longer than that is kept whole)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    amounts = [bool(cells) and all(_AMOUNT.match(r[i]) for r in cells) for i in range(len(headers))]
    lines_of = [
        [
            textwrap.wrap(v, (wrap or {})[i], break_long_words=False, break_on_hyphens=False)
            or [""]
            if i in (wrap or {})
            else [v]
            for i, v in enumerate(row)
        ]
        for row in cells
    ]
    widths = [
        max([len(h), *(len(part) for row in lines_of for part in row[i])])
        for i, h in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if a else v.ljust(w) for v, w, a in zip(values, widths, amounts, strict=True)
        ).rstrip()

    out = [title, line(list(headers)), "  ".join("-" * w for w in widths)]
    for row in lines_of:
        for k in range(max(len(parts) for parts in row)):
            out.append(line([parts[k] if k < len(parts) else "" for parts in row]))
    if not rows:
        out.append("(none)")
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float | Decimal):
        return f"{value:,.2f}"
    return "-" if value is None else str(value)


class Progress:
    """A one-line progress bar on a terminal; a few plain lines otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, max(total, 1)
        self._tty = sys.stdout.isatty()
        self._last_decile = -1

    def update(self, done: int) -> None:
        """Show ``done`` of ``total``."""
        fraction = min(done / self.total, 1.0)
        if self._tty:
            bar = "#" * int(fraction * 30)
            print(f"\r{self.label:<28} [{bar:<30}] {done:>7,}/{self.total:,}", end="", flush=True)
        elif int(fraction * 10) > self._last_decile:
            self._last_decile = int(fraction * 10)
            print(f"{self.label}: {done:,}/{self.total:,}", flush=True)

    def finish(self, done: int) -> None:
        """Show the final count and end the line."""
        self.update(done)
        if self._tty:
            print()
