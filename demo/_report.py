"""Plain-text tables and a progress bar for the demo (no terminal library needed)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a titled table with aligned columns (numbers right-aligned)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) if rows else False
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        )

    print(f"\n{title}")
    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))
    if not rows:
        print("(none)")


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
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
