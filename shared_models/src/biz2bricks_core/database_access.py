"""A server that answers but refuses us: the database, the role or the password is wrong.

PostgreSQL answers these at connect time with SQLSTATE 3D000 (database does not exist), 28000
(role does not exist, no pg_hba entry) or 28P01 (password authentication failed). They are not
an outage to wait out but a setting to fix, so each becomes ``DatabaseAccessError`` with one
line naming the fix (``createdb ...``, the role or password in ``DATABASE_URL``). The
DatabaseManager turns them into it where SQLAlchemy reports them (its ``handle_error`` event),
so every caller, the limit checks included, sees the same error.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy.engine import make_url

from biz2bricks_core.config import DatabaseConfig
from biz2bricks_core.errors import DatabaseAccessError

__all__ = ["REFUSED_SQLSTATES", "access_error", "sqlstate_of"]

MISSING_DATABASE: Final = "3D000"
BAD_ROLE: Final = "28000"
BAD_PASSWORD: Final = "28P01"
REFUSED_SQLSTATES: Final = frozenset({MISSING_DATABASE, BAD_ROLE, BAD_PASSWORD})


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE of ``error`` or of the driver error it wraps (SQLAlchemy's ``orig``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str) and code:
            return code
        current = getattr(current, "orig", None) or current.__cause__
    return None


def _target(config: DatabaseConfig) -> tuple[str, int, str, str]:
    """Host, port, user and database name that ``config`` connects to."""
    if config.database_url is not None and not config.uses_connector:
        url = make_url(config.sqlalchemy_url())
        return (
            url.host or "localhost",
            url.port or 5432,
            url.username or "postgres",
            url.database or "postgres",
        )
    return config.database_host, config.database_port, config.database_user, config.database_name


def access_error(config: DatabaseConfig, error: BaseException) -> DatabaseAccessError | None:
    """The DatabaseAccessError for a refused connection, or None for any other error."""
    code = sqlstate_of(error)
    if code not in REFUSED_SQLSTATES:
        return None
    host, port, user, name = _target(config)
    where = config.safe_description()
    setting = "DATABASE_URL (or DATABASE_NAME, DATABASE_USER, DATABASE_PASSWORD)"
    if code == MISSING_DATABASE:
        return DatabaseAccessError(
            f"database {name!r} does not exist on {host}:{port}: create it "
            f"(createdb -h {host} -p {port} -U {user} {name}, then alembic upgrade head) "
            f"or point {setting} at an existing one"
        )
    if code == BAD_PASSWORD:
        return DatabaseAccessError(
            f"password authentication failed for role {user!r} at {where}: "
            f"set the right password in {setting}"
        )
    return DatabaseAccessError(
        f"role {user!r} may not connect to {where} ({_first_line(error)}): set the role in "
        f"{setting} to one that exists, or create it (createuser -h {host} -p {port} {user})"
    )


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error)
    text = text.split("\n", 1)[0]
    # SQLAlchemy's adapted errors read "<class '...asyncpg.Error'>: role ... does not exist".
    return text.rsplit(">: ", 1)[-1]
