"""Testing pooled connections at checkout, skipped for the hot path's recently used ones.

SQLAlchemy's ``pool_pre_ping`` tests every checkout with three round trips (it wraps its ping
in a transaction): 0.3 ms idle, 0.7-1.4 ms under load, on every batch the consumer writes and
every limit check. ``CheckoutTest`` keeps the test, as DB_POOL_PRE_PING asks, but skips it for
a connection that was just made, or that ``DatabaseManager.driver()`` used successfully less
than PING_BYPASS_S ago and that the driver path checks out again (HikariCP's
aliveBypassWindowMs, 500 ms, is the same rule). A connection the server dropped inside that
window fails its first statement instead: ``driver()`` invalidates it and calls ``lost()``,
after which no connection marked before the loss skips the test; the caller's retry (the
consumer's) or its fail-open/closed decision (a limit check) takes over. Every other checkout
(sessions, ``engine.connect()``) is tested as before.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any, Final

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError, InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine

PING_BYPASS_S: Final = 0.5
_ALIVE_AT: Final = "biz2bricks_alive_at"
_FRESH: Final = "biz2bricks_fresh"

# Set by DatabaseManager.driver() around its checkout only: the one path that may skip the test.
DRIVER_CHECKOUT: ContextVar[bool] = ContextVar("biz2bricks_driver_checkout", default=False)


def mark_alive(info: dict[Any, Any]) -> None:
    """Record that the connection whose pool ``info`` this is just worked (driver path)."""
    info[_ALIVE_AT] = time.monotonic()


def connection_lost(connection: asyncpg.Connection, error: asyncpg.InternalClientError) -> bool:
    """Whether asyncpg's internal error means the connection is gone: closed, or its protocol
    left mid-message because the server ended it while idle ("cannot switch to state ...")
    rather than a client-side fault (a missing codec, a bad argument)."""
    return connection.is_closed() or str(error).startswith("cannot switch to state")


class CheckoutTest:
    """The checkout test of one engine (see the module's docstring)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._dialect = engine.sync_engine.dialect
        self._lost_at = float("-inf")
        event.listen(engine.sync_engine, "connect", self._connected)
        event.listen(engine.sync_engine, "checkout", self._checkout)

    def lost(self) -> None:
        """A connection was found dead: connections marked before now are tested again."""
        self._lost_at = time.monotonic()

    def _connected(self, dbapi_connection: Any, record: Any) -> None:
        record.info[_FRESH] = True

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        # Taken, not read: only the driver path's next success marks the connection again.
        fresh = record.info.pop(_FRESH, False)
        alive_at = record.info.pop(_ALIVE_AT, None)
        if fresh:
            return
        if (
            DRIVER_CHECKOUT.get()
            and alive_at is not None
            and alive_at > self._lost_at
            and time.monotonic() - alive_at < PING_BYPASS_S
        ):
            return
        try:
            self._dialect.do_ping(dbapi_connection)
        except Exception as error:
            # As SQLAlchemy's pre-ping: a disconnect means the server restarted, so every
            # older connection is dead too (the pool is invalidated); anything else replaces
            # this connection only.
            if self._dialect.is_disconnect(error, dbapi_connection, None):  # type: ignore[arg-type]
                raise InvalidatePoolError(f"pool test on checkout: {error!r}") from error
            raise DisconnectionError(f"pool test on checkout: {error!r}") from error
