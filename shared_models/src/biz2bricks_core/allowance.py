"""The token allowance of an organization and the token-limit rule, in Python and in SQL.

- ``allowance``: what a period may use = the plan's token limit + what credit grants paid for
  in this period + what the grants live now still hold (None: an unlimited plan, whatever the
  grants). See biz2bricks_core.credits for which grants are live and how usage burns them.
- ``token_reason``: may a call of ``estimate`` tokens start, given the period's usage and the
  live holds? ``ok`` while used + reserved + estimate fits, else ``soft_limit_exceeded`` (a
  soft-limit plan: allowed, warn) or ``token_limit_exceeded`` (refused).
- ``remaining``: allowance - used - reserved, never below 0 (None: unlimited).

The SQL twins are composed by the hold functions (biz2bricks_core.holds), the consumer's batch
statement (its alert thresholds) and UsageService; ``TOKEN_REASON_BODY`` is the body of the
database function ``usage_token_reason`` that the hold functions call. The twins take SQL
expressions written in code, never input; tests/core/test_billing_rules_sql.py runs both twins
on the same cases.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "TOKEN_REASON_BODY",
    "allowance",
    "allowance_sql",
    "remaining",
    "remaining_sql",
    "token_reason",
]


def allowance(token_limit: int | None, grants_consumed: int, grants_live: int) -> int | None:
    """Tokens the period may use: the plan's limit, plus what grants paid for in the period,
    plus what the live grants still hold; None when the plan is unlimited."""
    return None if token_limit is None else token_limit + grants_consumed + grants_live


def allowance_sql(token_limit: str, grants_consumed: str, grants_live: str) -> str:
    """SQL twin of ``allowance`` (NULL for an unlimited plan, as NULL + n is NULL)."""
    return f"({token_limit} + {grants_consumed} + {grants_live})"


def token_reason(
    used: int, reserved: int, estimate: int, allowance: int | None, soft_limit: bool
) -> str:
    """The token-limit rule: may a call of ``estimate`` tokens start? (SQL twin below.)"""
    if allowance is None:
        return "unlimited"
    if used + reserved + estimate <= allowance:
        return "ok"
    return "soft_limit_exceeded" if soft_limit else "token_limit_exceeded"


TOKEN_REASON_BODY: Final = """
SELECT CASE
    WHEN p_allowance IS NULL THEN 'unlimited'
    WHEN p_used + p_reserved + p_estimate <= p_allowance THEN 'ok'
    WHEN p_soft_limit THEN 'soft_limit_exceeded'
    ELSE 'token_limit_exceeded' END
"""


def remaining(allowance: int | None, used: int, reserved: int) -> int | None:
    """Tokens left for new calls: never below 0; None when unlimited."""
    return None if allowance is None else max(allowance - used - reserved, 0)


def remaining_sql(allowance: str, used: str, reserved: str) -> str:
    """SQL twin of ``remaining`` (greatest() skips NULLs, so unlimited is said explicitly)."""
    return (
        f"CASE WHEN ({allowance}) IS NULL THEN NULL"
        f" ELSE greatest(({allowance}) - ({used}) - ({reserved}), 0) END"
    )
