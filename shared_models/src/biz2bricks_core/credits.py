"""Credit consumption: purchased tokens pay for what a finished period used beyond the plan.

Credits extend the allowance of every period (see UsageService.check_token_limit); when a
period ends, the tokens it used beyond the plan's limit are paid from the credits, once, at
the roll. ``credits_after_period`` is the rule and ``credits_after_period_sql`` its SQL twin,
which the consumer's writer runs when a batch rolls a period forward;
tests/core/test_billing_rules_sql.py checks both agree.
"""

from __future__ import annotations

__all__ = ["credits_after_period", "credits_after_period_sql"]


def credits_after_period(credits: int, used: int, limit: int | None) -> int:
    """Credits left after a period that used ``used`` tokens on a plan of ``limit`` (None:
    unlimited, nothing to pay); never below zero."""
    beyond = 0 if limit is None else max(used - limit, 0)
    return max(credits - beyond, 0)


def credits_after_period_sql(credits: str, used: str, limit: str) -> str:
    """SQL twin of ``credits_after_period``; the arguments are column expressions, not input."""
    return f"greatest({credits} - greatest({used} - coalesce({limit}, {used}), 0), 0)"
