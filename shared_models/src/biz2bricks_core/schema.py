"""The database schema this release needs, and the start-up check that names the fix.

A consumer started against a database that was not migrated would fail its first batch on a
missing column and restart forever; checked at start, it exits with one line instead.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import SchemaOutdatedError

__all__ = ["SCHEMA_REVISION", "check_schema", "schema_problem"]

# The newest revision in migrations/versions (a test checks they agree). Revisions are
# numbered, so "newer" is a larger number.
SCHEMA_REVISION: Final = "0013"

UPGRADE_HINT: Final = "run `alembic upgrade head` (README: Roll-out order) and start again"


def schema_problem(current: str | None, needed: str = SCHEMA_REVISION) -> str | None:
    """Why a database at revision ``current`` (None: never migrated) cannot serve, or None."""
    if current is None:
        return (
            "the database has no schema revision (alembic_version missing or empty): "
            + UPGRADE_HINT
        )
    if not current.isdigit() or int(current) < int(needed):
        return (
            f"the database schema is at revision {current}; this release needs {needed} "
            f"or newer: {UPGRADE_HINT}"
        )
    return None


async def check_schema(db: DatabaseManager) -> None:
    """Raise SchemaOutdatedError unless the database is migrated to SCHEMA_REVISION or newer.

    Connection errors propagate: the caller decides whether a database that is down at start
    is fatal.
    """
    async with db.driver() as conn:
        try:
            current = await conn.fetchval("SELECT version_num FROM alembic_version")
        except asyncpg.UndefinedTableError:
            current = None
    problem = schema_problem(current)
    if problem is not None:
        raise SchemaOutdatedError(problem)
