"""Usage alerts: which thresholds of an allowance a committed batch crossed, and their message.

A threshold (percent of the allowance = token limit + credits) is crossed when the period's
usage moves from below it to at or above it. The consumer's batch transaction writes one
``usage_alerts`` row per crossed threshold (unique per organization, period, metric and
threshold, so redeliveries and replicas write it once); the relay publishes unpublished rows.
Holds do not count here: a reservation alone never alerts, usage does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

__all__ = [
    "ALERT_BODY_KEYS",
    "CROSSED",
    "MARK_PUBLISHED",
    "PENDING_ALERTS",
    "alert_message",
    "crossed_sql",
    "crossed_thresholds",
    "insert_alerts_sql",
]

ALERT_BODY_KEYS: Final = (
    "id",
    "organization_id",
    "period_start",
    "metric",
    "threshold_pct",
    "used",
    "allowance",
    "created_at",
)


def crossed_thresholds(
    before: int, after: int, allowance: int, thresholds_pct: Iterable[int]
) -> list[int]:
    """The thresholds that usage moving from ``before`` to ``after`` crossed (SQL twin: CROSSED)."""
    return sorted(pct for pct in thresholds_pct if before * 100 < pct * allowance <= after * 100)


def crossed_sql(allowance: str, *, exact: bool = True) -> str:
    """SQL twin of ``crossed_thresholds`` for one threshold: over columns named before_tokens,
    after_tokens and pct, and the allowance expression ``allowance``. Exact: in numeric, for
    any values; else in the operands' types (integers below the bounds below)."""
    before, after, pct = "before_tokens", "after_tokens", "pct"
    if exact:
        before, after, pct = f"{before}::numeric", f"{after}::numeric", f"{pct}::numeric"
    return f"({before} * 100 < {pct} * {allowance} AND {pct} * {allowance} <= {after} * 100)"


CROSSED: Final = crossed_sql("allowance")

# Within these bounds every product of the rule fits in a bigint (|pct * allowance| < 2^63,
# usage * 100 < 2^60), so the batch statement evaluates it in integers; beyond them (a limit of
# nine quadrillion tokens, a threshold past 1000%), in numeric. The allowance is numeric (the
# grants' part is a sum): numeric arithmetic on every (organization, threshold) pair cost the
# batch statement 3% when every organization of a batch had a token limit.
INTEGER_SAFE_TOKENS: Final = 2**53
INTEGER_SAFE_PCT: Final = 1000


def insert_alerts_sql(counters: str) -> str:
    """An INSERT for a data-modifying CTE of the consumer's batch statement: one usage_alerts
    row per threshold that a committed batch moved an organization's usage across.

    ``counters`` is a relation with organization_id, plan, period_start (after the batch),
    before_tokens (the period's usage before the batch; 0 when the period rolled),
    after_tokens and allowance (NULL: unlimited, never alerts). Rows are inserted in
    (organization, threshold) order, so replicas take the unique index's locks in one order.
    """
    return f"""INSERT INTO usage_alerts (organization_id, period_start, metric, threshold_pct,
        used, allowance)
    SELECT organization_id, period_start, 'tokens', pct, after_tokens, allowance
    FROM (SELECT c.organization_id, c.period_start, c.before_tokens, c.after_tokens,
            c.allowance, c.allowance_int, t.pct
          FROM (
            -- Once per organization (OFFSET 0: not copied into every pair below).
            SELECT c.*, CASE WHEN c.allowance > -{INTEGER_SAFE_TOKENS}
                    AND c.allowance < {INTEGER_SAFE_TOKENS}
                    AND c.after_tokens < {INTEGER_SAFE_TOKENS}
                THEN c.allowance::bigint END AS allowance_int
            FROM {counters} c
            WHERE c.allowance IS NOT NULL AND c.after_tokens > c.before_tokens
            OFFSET 0
          ) c
          JOIN (SELECT name, unnest(alert_thresholds_pct) AS pct FROM subscription_plans) t
            ON t.name = c.plan) x
    WHERE CASE WHEN allowance_int IS NOT NULL AND pct BETWEEN 0 AND {INTEGER_SAFE_PCT}
        THEN {crossed_sql("allowance_int", exact=False)} ELSE {CROSSED} END
    ORDER BY organization_id, pct
    ON CONFLICT (organization_id, period_start, metric, threshold_pct) DO NOTHING
    RETURNING id"""


PENDING_ALERTS: Final = (
    "SELECT id, organization_id, period_start, metric, threshold_pct, used, allowance,"
    " created_at FROM usage_alerts WHERE published_at IS NULL"
    " ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED"
)
MARK_PUBLISHED: Final = (
    "UPDATE usage_alerts SET published_at = now() WHERE id = ANY($1::uuid[])"
    " AND published_at IS NULL"
)


def _json_value(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def alert_message(row: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The Pub/Sub body (JSON with every column but published_at) and attributes of an alert."""
    body = {key: _json_value(row[key]) for key in ALERT_BODY_KEYS}
    return json.dumps(body, separators=(",", ":")).encode(), {"alert_id": str(row["id"])}
