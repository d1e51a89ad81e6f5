"""Exceptions of the consumer worker, and failures as data: which to retry, which to isolate."""

from __future__ import annotations

import enum
from typing import Final

import asyncpg
from google.api_core import exceptions as gexc
from sqlalchemy.exc import DBAPIError

from biz2bricks_core.database import DATABASE_DOWN_ERRORS
from biz2bricks_core.errors import Biz2BricksError


class ConsumerError(Biz2BricksError):
    """Root of the consumer's own exceptions."""


class BatchReleased(ConsumerError):
    """A batch could not be committed (retry budget or shutdown grace spent): it is released."""


class WorkerFailed(ConsumerError):
    """A long-running task of the worker kept dying; the process should exit and be restarted."""


class Outcome(enum.Enum):
    """What became of one attempt to commit a batch; ``BatchCommitter`` acts on it."""

    COMMITTED = "committed"  # ack every message of the batch
    RETRY = "retry"  # the database is unreachable or busy: back off, try again, ack nothing
    ISOLATE = "isolate"  # the database refused the content: bisect to find the message
    RELEASE = "release"  # retry budget or shutdown grace spent: hand every message back


# Database failures worth retrying: DATABASE_DOWN_ERRORS (the server went away, a connection
# broke, the pool timed out), and by SQLSTATE a serialization failure or deadlock under
# concurrency, a connection exception or a server shutting down.
RETRYABLE_SQLSTATES: Final = ("40001", "40P01", "08", "57P")

# Failures that retrying the same rows can never fix: the database refused the data itself
# (class 22: NUL in text, bad escape, out of range; class 23: a constraint; class 54: a
# program limit), or the driver could not encode a parameter. Checked before the retryable
# ones (asyncpg's client-side DataError is an InterfaceError, which also means "disconnected").
PERMANENT_SQLSTATES: Final = ("22", "23", "54")
PERMANENT_DB_ERRORS: Final = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    asyncpg.exceptions._base.DataError,  # client side: a parameter it cannot encode
    UnicodeEncodeError,
)

# Pub/Sub failures worth retrying on pull, ack and lease extension.
RETRYABLE_PUBSUB_ERRORS: Final = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Aborted,
    gexc.Unknown,
    gexc.ResourceExhausted,
)

# The subscription is gone (deleted and re-created, an emulator restart): wait for it.
SUBSCRIPTION_MISSING_ERRORS: Final = (gexc.NotFound,)


def _sqlstate(error: BaseException) -> str:
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    return str(getattr(error, "sqlstate", None) or getattr(error, "pgcode", None) or "")


def _driver_error(error: BaseException) -> BaseException:
    if isinstance(error, DBAPIError) and error.orig is not None:
        return error.orig
    return error


def is_permanent_db_error(error: BaseException) -> bool:
    """True when the database (or the driver) refused the rows themselves."""
    if isinstance(_driver_error(error), PERMANENT_DB_ERRORS):
        return True
    sqlstate = _sqlstate(error)
    return bool(sqlstate) and sqlstate.startswith(PERMANENT_SQLSTATES)


def is_retryable_db_error(error: BaseException) -> bool:
    """True for connection loss and transient server states, including asyncpg's own errors."""
    if is_permanent_db_error(error):
        return False
    if isinstance(error, DATABASE_DOWN_ERRORS):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    sqlstate = _sqlstate(error)
    return bool(sqlstate) and sqlstate.startswith(RETRYABLE_SQLSTATES)


def classify_db_error(error: BaseException) -> Outcome | None:
    """RETRY or ISOLATE for a known failure; None for anything else (a bug to surface)."""
    if is_permanent_db_error(error):
        return Outcome.ISOLATE
    if is_retryable_db_error(error):
        return Outcome.RETRY
    return None


def describe_db_error(error: BaseException) -> str:
    """The database's error as a reject reason: SQLSTATE and message."""
    driver = _driver_error(error)
    sqlstate = _sqlstate(driver)
    prefix = (
        f"database refused the event (SQLSTATE {sqlstate})"
        if sqlstate
        else ("database driver refused the event")
    )
    return f"{prefix}: {type(driver).__name__}: {driver}"
