"""Exceptions of the consumer worker."""

from __future__ import annotations

from typing import Final

from google.api_core import exceptions as gexc
from sqlalchemy.exc import DBAPIError

from biz2bricks_core.database import DATABASE_DOWN_ERRORS
from biz2bricks_core.errors import Biz2BricksError


class ConsumerError(Biz2BricksError):
    """Root of the consumer's own exceptions."""


class BatchAbandoned(ConsumerError):
    """A batch could not be committed (retry budget or shutdown grace spent); it is released."""


# Database failures worth retrying: DATABASE_DOWN_ERRORS (the server went away, a connection
# broke, the pool timed out), and by SQLSTATE a serialization failure or deadlock under
# concurrency. Everything else is a bug.
RETRYABLE_SQLSTATES: Final = ("40001", "40P01", "08", "57P")

# Pub/Sub failures worth retrying on pull, ack and lease extension.
RETRYABLE_PUBSUB_ERRORS: Final = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Aborted,
    gexc.Unknown,
    gexc.ResourceExhausted,
)


def is_retryable_db_error(error: BaseException) -> bool:
    """True for connection loss and transient server states, including asyncpg's own errors."""
    if isinstance(error, DATABASE_DOWN_ERRORS):
        return True
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        error = error.orig if error.orig is not None else error
    # 40001 serialization failure, 40P01 deadlock, 08xxx connection, 57Pxx shutdown.
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return bool(sqlstate) and str(sqlstate).startswith(RETRYABLE_SQLSTATES)
