"""Which database errors the worker retries (backing off, batch unacked) and which it raises."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError

from biz2bricks_consumer.errors import is_retryable_db_error

pgerr = asyncpg.exceptions


@pytest.mark.parametrize(
    "error",
    [
        pgerr.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
        pgerr.AdminShutdownError("terminating connection due to administrator command"),
        pgerr.CannotConnectNowError("the database system is starting up"),
        pgerr.SerializationError("could not serialize access"),
        pgerr.DeadlockDetectedError("deadlock detected"),
        ConnectionResetError("reset by peer"),
        TimeoutError(),
        DBAPIError("SELECT 1", None, pgerr.SerializationError("could not serialize access")),
        DBAPIError("SELECT 1", None, pgerr.AdminShutdownError("terminating connection")),
    ],
    ids=repr,
)
def test_connection_loss_and_transient_conflicts_are_retried(error: BaseException) -> None:
    assert is_retryable_db_error(error)


@pytest.mark.parametrize(
    "error",
    [
        pgerr.UniqueViolationError("duplicate key value"),
        pgerr.InvalidTextRepresentationError("invalid input syntax for type uuid"),
        pgerr.UndefinedTableError('relation "usage_events" does not exist'),
        DBAPIError("SELECT 1", None, pgerr.UndefinedColumnError("column does not exist")),
        ValueError("a bug"),
    ],
    ids=repr,
)
def test_bugs_and_schema_errors_are_not_retried(error: BaseException) -> None:
    assert not is_retryable_db_error(error)
