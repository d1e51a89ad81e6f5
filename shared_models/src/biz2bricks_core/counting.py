"""What one stored event counts for: its tokens against the limits, and whether it is priced.

- ``event_tokens``: the tokens an event counts against limits = input + output (input already
  includes cache reads and writes).
- ``is_unpriced``: an event whose cost is unknown (NULL, never 0); ``unpriced_count_sql``
  counts them in an aggregate, ``unpriced_sql`` tests one row.

The consumer's writer, reconcile, reprice and the rollup compose the SQL twins, which take SQL
expressions written in code, never input; tests/core/test_billing_rules_sql.py runs both twins
on the same cases. Why an event is unpriced (its ``unpriced_reason``) is a pricing rule:
biz2bricks_core.pricing.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = [
    "event_tokens",
    "event_tokens_sql",
    "is_unpriced",
    "unpriced_count_sql",
    "unpriced_sql",
]


def event_tokens(input_tokens: int, output_tokens: int) -> int:
    """Tokens one event counts against its organization's limits."""
    return input_tokens + output_tokens


def event_tokens_sql(input_tokens: str, output_tokens: str) -> str:
    """SQL twin of ``event_tokens``."""
    return f"({input_tokens} + {output_tokens})"


def is_unpriced(cost_usd: Decimal | None) -> bool:
    """An event with no known cost: counted, shown, never taken as $0."""
    return cost_usd is None


def unpriced_sql(cost_usd: str) -> str:
    """SQL twin of ``is_unpriced`` for one row."""
    return f"({cost_usd} IS NULL)"


def unpriced_count_sql(cost_usd: str) -> str:
    """The number of unpriced events in an aggregate (a group of usage_events rows)."""
    return f"(count(*) - count({cost_usd}))"
