"""biz2bricks-rollup: daily usage summaries and counter reconciliation."""

from __future__ import annotations

from biz2bricks_rollup.reconcile import Drift, ReservedStorage, find_drift, repair, reserved_only
from biz2bricks_rollup.rollup import DayResult, RollupBusyError, rollup_day, run_rollup
from biz2bricks_rollup.server import RollupServer, ServeSettings

__all__ = [
    "DayResult",
    "Drift",
    "ReservedStorage",
    "RollupBusyError",
    "RollupServer",
    "ServeSettings",
    "find_drift",
    "repair",
    "reserved_only",
    "rollup_day",
    "run_rollup",
]
