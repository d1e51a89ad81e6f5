"""The lock order of the per-organization counters (``usage_limits``), in Python and in SQL.

Every statement that changes the counter rows of several organizations in one transaction
locks them first, in organization-id order: the consumer's batch, reconcile, the holds
repair, reprice, and the corrections built on them. Two such transactions on overlapping
organizations then wait for each other instead of deadlocking. A statement that changes one
organization's row (a reservation, a release, a storage change) needs no order.

``lock_order`` is the order in Python (UUIDs compare as PostgreSQL compares uuid: by bytes),
``lock_counters_sql`` the locking query every such writer composes; both are checked on the
same cases, and writers of different modules are run against each other, in
tests/core/test_billing_rules_sql.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

__all__ = ["lock_counters_sql", "lock_order"]


def lock_order(organization_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """The distinct organizations in the order their counter rows are locked."""
    return sorted(set(organization_ids))


def lock_counters_sql(organizations: str, columns: str = "l.organization_id") -> str:
    """Lock the counter rows of ``organizations`` (a subquery or an array expression) in
    organization order; returns ``columns`` of each locked row (alias ``l``).

    ``FOR UPDATE`` returns the newest committed version of each row, so a statement that reads
    the counters from this query sees what every earlier writer committed.
    """
    return (
        f"SELECT {columns} FROM usage_limits l"
        f" WHERE l.organization_id IN ({organizations})"
        " ORDER BY l.organization_id FOR UPDATE"
    )
