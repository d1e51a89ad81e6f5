"""Tidy the credit grants: take from the grants what they owe, record the expiries in the
ledger and refresh the grants' cache.

No answer depends on this (every reader compares grants with ``now()``); it keeps the ledger
complete (a consume row for what the batch path paid from the cache, an expire row with each
expired grant's breakage) and the counters' cache exact, so
that the request path takes its one-statement fast path again. Each organization is handled
under its counter-row lock, in the consumers' order, a chunk at a time.
"""

from __future__ import annotations

import uuid
from typing import Final

from biz2bricks_core.counters import lock_counters_sql
from biz2bricks_core.credits import refresh_grants
from biz2bricks_core.database import DatabaseManager

CHUNK: Final = 500
# Paged by organization id within one run: consumers make organizations owe tokens again with
# every batch, so "the first chunk still due" would never run out.
DUE: Final = (
    "SELECT organization_id FROM usage_limits"
    " WHERE (grants_next_change <= now() OR grants_pending > 0) AND organization_id > $2"
    " ORDER BY organization_id LIMIT $1"
)
FIRST: Final = uuid.UUID(int=0)
LOCK: Final = lock_counters_sql("SELECT unnest($1::uuid[])")


async def sweep_grants(db: DatabaseManager, chunk: int = CHUNK) -> int:
    """Refresh every organization whose grants started or ended since its cache was written or
    that owe tokens; returns the tokens recorded as expired."""
    expired, after = 0, FIRST
    while True:
        async with db.driver() as conn, conn.transaction():
            due = [r[0] for r in await conn.fetch(DUE, chunk, after)]
            if not due:
                return expired
            await conn.fetch(LOCK, due)
            rows = await refresh_grants(conn, due)
            expired += sum(int(r["expired"]) for r in rows)
        if len(due) < chunk:
            return expired
        after = due[-1]
