"""Which database errors the worker retries (backing off, batch unacked) and which it raises."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError

from biz2bricks_consumer.errors import Outcome, classify_db_error, is_retryable_db_error

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


@pytest.mark.parametrize(
    "error",
    [
        pgerr.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00'),
        pgerr.UntranslatableCharacterError("unsupported Unicode escape sequence"),
        pgerr.NumericValueOutOfRangeError("value out of range"),
        pgerr.CheckViolationError("violates check constraint"),
        asyncpg.exceptions._base.DataError("invalid input for query argument $1"),
        DBAPIError("INSERT", None, pgerr.UntranslatableCharacterError("unsupported escape")),
    ],
    ids=repr,
)
def test_refused_content_is_isolated_never_retried(error: BaseException) -> None:
    # Retrying the same rows can never succeed: the batch is bisected instead.
    assert not is_retryable_db_error(error)
    assert classify_db_error(error) is Outcome.ISOLATE


def test_a_dropped_connection_is_retried_and_a_bug_is_neither() -> None:
    assert classify_db_error(ConnectionResetError()) is Outcome.RETRY
    assert classify_db_error(pgerr.UndefinedTableError("no table")) is None
