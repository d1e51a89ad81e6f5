"""Credit grants in the database: grant, void, list (low rate; the burn is the writer's).

Every statement that changes a grant first locks the organization's ``usage_limits`` row, as
every writer of the counters and the grants does (biz2bricks_core.counters), then writes the
grant, its ledger row and an audit row, and refreshes the grants' cache (``refresh_grants``,
which first takes from the grants what they owe), all in one transaction.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Final

from biz2bricks_core.credits import (
    BURN_ORDER,
    FLUSH_GRANTS,
    CreditGrant,
    grants_owing_sql,
    refresh_grants,
)
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import (
    GrantConflictError,
    InvalidArgumentError,
    UnknownGrantError,
    UnknownOrganizationError,
)

COLUMNS: Final = (
    "g.id, g.organization_id, g.tokens, g.remaining, g.priority, g.effective_at, g.expires_at,"
    " g.voided_at, g.reason, g.created_at"
)
LOCK_ORGANIZATION: Final = "SELECT now() FROM usage_limits WHERE organization_id = $1 FOR UPDATE"
INSERT_GRANT: Final = (
    "INSERT INTO credit_grants AS g (id, organization_id, tokens, remaining, priority,"
    " effective_at, expires_at, reason) VALUES ($1, $2, $3, $3, $4, $5, $6, $7)"
    f" ON CONFLICT (id) DO NOTHING RETURNING {COLUMNS}"
)
GRANT_BY_ID: Final = f"SELECT {COLUMNS} FROM credit_grants g WHERE g.id = $1"
LEDGER: Final = (
    "INSERT INTO credit_ledger (organization_id, grant_id, kind, tokens, period_start)"
    " SELECT $1, $2, $3::text, $4, CASE WHEN $3::text = 'grant' THEN NULL ELSE l.period_start END"
    " FROM usage_limits l WHERE l.organization_id = $1 ON CONFLICT DO NOTHING"
)
AUDIT: Final = (
    "INSERT INTO audit_logs (organization_id, action, entity_type, entity_id, details)"
    " VALUES ($1, $2, 'credit_grants', $3, $4::jsonb)"
)
VOID: Final = (
    "UPDATE credit_grants g SET voided_at = now(), void_reason = $2,"
    " remaining = CASE WHEN g.expires_at IS NOT NULL AND g.expires_at <= now()"
    "   THEN g.remaining ELSE 0 END"
    f" WHERE g.id = $1 AND g.voided_at IS NULL RETURNING {COLUMNS}"
)
# Each grant's remaining, less what it owes of the tokens the batch path paid from the cache.
LIST: Final = (
    "SELECT g.id, g.organization_id, g.tokens, g.remaining - coalesce(o.owed, 0) AS remaining,"
    " g.priority, g.effective_at, g.expires_at, g.voided_at, g.reason, g.created_at"
    " FROM credit_grants g LEFT JOIN (SELECT s.id, s.owed FROM usage_limits l"
    f" CROSS JOIN LATERAL {grants_owing_sql('l')} s WHERE l.organization_id = $1) o"
    " ON o.id = g.id WHERE g.organization_id = $1"
    " AND ($2 OR (g.voided_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > now())))"
    f" ORDER BY {BURN_ORDER}"
)
ORGANIZATION_EXISTS: Final = "SELECT now() FROM usage_limits WHERE organization_id = $1"


def grant_from_row(row: Any, now: datetime) -> CreditGrant:
    """A CreditGrant; ``remaining`` is 0 once the grant ended (voided or expired)."""
    ended = row["voided_at"] is not None or (
        row["expires_at"] is not None and row["expires_at"] <= now
    )
    return CreditGrant(
        id=row["id"],
        organization_id=row["organization_id"],
        tokens=int(row["tokens"]),
        remaining=0 if ended else int(row["remaining"]),
        priority=int(row["priority"]),
        effective_at=row["effective_at"],
        expires_at=row["expires_at"],
        voided_at=row["voided_at"],
        reason=row["reason"],
        created_at=row["created_at"],
    )


def _differences(
    row: Any, org: uuid.UUID, values: dict[str, Any], effective_at: datetime | None
) -> list[str]:
    wanted = {"organization_id": org, **values}
    if effective_at is not None:
        wanted["effective_at"] = effective_at
    return [
        f"{name}: stored {row[name]!r}, requested {value!r}"
        for name, value in wanted.items()
        if row[name] != value
    ]


async def grant(
    db: DatabaseManager,
    org: uuid.UUID,
    tokens: int,
    *,
    priority: int,
    effective_at: datetime | None,
    expires_at: datetime | None,
    reason: str | None,
    grant_id: uuid.UUID | None,
) -> CreditGrant:
    """Create the grant (or return the same one for a repeated ``grant_id``)."""
    values = {"tokens": tokens, "priority": priority, "expires_at": expires_at, "reason": reason}
    async with db.unavailable_as_error(), db.driver() as conn, conn.transaction():
        now = await conn.fetchval(LOCK_ORGANIZATION, org)
        if now is None:
            raise UnknownOrganizationError(f"organization {org} has no usage_limits row")
        start = effective_at if effective_at is not None else now
        if expires_at is not None and expires_at <= start:
            raise InvalidArgumentError(
                f"expires_at: {expires_at.isoformat()} is not after effective_at"
                f" {start.isoformat()}"
            )
        new_id = grant_id if grant_id is not None else uuid.uuid4()
        # What the grants owe is taken before the set of grants changes (a grant effective in
        # the past must not owe what was paid before it existed).
        await conn.execute(FLUSH_GRANTS, [org])
        row = await conn.fetchrow(
            INSERT_GRANT, new_id, org, tokens, priority, start, expires_at, reason
        )
        if row is None:  # the id exists: the same grant again, or a conflict
            row = await conn.fetchrow(GRANT_BY_ID, new_id)
            differences = _differences(row, org, values, effective_at)
            if differences:
                raise GrantConflictError(f"grant {new_id}: " + "; ".join(differences))
            return grant_from_row(row, now)
        await conn.execute(LEDGER, org, new_id, "grant", tokens)
        details = {
            "tokens": tokens,
            "priority": priority,
            "effective_at": start.isoformat(),
            "expires_at": None if expires_at is None else expires_at.isoformat(),
            "reason": reason,
        }
        await conn.execute(AUDIT, org, "credits.grant", str(new_id), json.dumps(details))
        await refresh_grants(conn, [org])
        return grant_from_row(row, now)


async def void(db: DatabaseManager, grant_id: uuid.UUID, reason: str | None) -> CreditGrant:
    """End the grant now: what it still held is voided (idempotent)."""
    async with db.unavailable_as_error(), db.driver() as conn, conn.transaction():
        row = await conn.fetchrow(GRANT_BY_ID, grant_id)
        if row is None:
            raise UnknownGrantError(f"credit grant {grant_id} does not exist")
        org = row["organization_id"]
        now = await conn.fetchval(LOCK_ORGANIZATION, org)
        # What the grants owe is taken first: the void ends what the grant holds after that.
        await conn.execute(FLUSH_GRANTS, [org])
        row = await conn.fetchrow(GRANT_BY_ID, grant_id)
        voided = await conn.fetchrow(VOID, grant_id, reason)
        if voided is None:  # voided before
            return grant_from_row(await conn.fetchrow(GRANT_BY_ID, grant_id), now)
        expired = row["expires_at"] is not None and row["expires_at"] <= now
        lost = 0 if expired else int(row["remaining"])
        await conn.execute(LEDGER, org, grant_id, "void", lost)
        details = {"tokens_voided": lost, "reason": reason}
        await conn.execute(AUDIT, org, "credits.void", str(grant_id), json.dumps(details))
        await refresh_grants(conn, [org])
        return grant_from_row(voided, now)


async def list_grants(
    db: DatabaseManager, org: uuid.UUID, include_ended: bool
) -> list[CreditGrant]:
    """The organization's grants in burn order; ended ones only with ``include_ended``."""
    async with db.unavailable_as_error(), db.driver() as conn, conn.transaction():
        now = await conn.fetchval(ORGANIZATION_EXISTS, org)
        if now is None:
            raise UnknownOrganizationError(f"organization {org} has no usage_limits row")
        return [grant_from_row(r, now) for r in await conn.fetch(LIST, org, include_ended)]
