"""DatabaseManager: an async engine and session factory per event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from biz2bricks_core._pool_checks import (
    DRIVER_CHECKOUT,
    CheckoutTest,
    connection_lost,
    mark_alive,
)
from biz2bricks_core.config import DatabaseConfig
from biz2bricks_core.database_access import access_error
from biz2bricks_core.errors import DatabaseUnavailableError

__all__ = [
    "DATABASE_DOWN_ERRORS",
    "DRIVER_DISCONNECT_ERRORS",
    "DatabaseManager",
    "get_database_manager",
]

log = logging.getLogger(__name__)


# What the asyncpg driver itself raises when the connection drops or the server stops (hot
# paths call it directly, so SQLAlchemy does not wrap these): "connection is closed" and
# other interface errors, SQLSTATE 08xxx, and 57xxx (admin shutdown, cannot connect now).
DRIVER_DISCONNECT_ERRORS: Final = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)

# Every way "the database cannot be used" surfaces, through SQLAlchemy or from the driver:
# what the limit checks fail open/closed on and what the consumer backs off and retries.
# DatabaseUnavailableError includes DatabaseAccessError: a missing database, role or password.
DATABASE_DOWN_ERRORS: Final = (
    DatabaseUnavailableError,
    OSError,  # includes ConnectionError
    TimeoutError,
    PoolTimeoutError,
    OperationalError,
    InterfaceError,
    *DRIVER_DISCONNECT_ERRORS,
)


@dataclass
class _LoopResources:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    connector: Any | None  # google.cloud.sql.connector.Connector when enabled
    checkout_test: CheckoutTest | None = None  # None: DB_POOL_PRE_PING off
    # Started async generator whose ``finally`` releases these resources (see _release_on_close).
    closer: AsyncGenerator[None, None] | None = None

    async def close(self) -> None:
        await self.engine.dispose()
        if self.connector is not None:
            await self.connector.close_async()


class DatabaseManager:
    """Owns the async engines of one database, one engine per running event loop.

    asyncpg connections belong to the loop that opened them, so a second loop (pytest, a worker
    thread, each ``asyncio.run``) gets its own engine instead of a "Future attached to a
    different loop" error. A loop's engine is disposed when that loop shuts down (``asyncio.run``
    and ``asyncio.Runner`` close every async generator of the loop before closing it, and one of
    them is ours); a loop closed without that step is forgotten the next time a new loop starts,
    so a process never keeps pools for loops that are gone.
    """

    def __init__(self, config: DatabaseConfig | None = None) -> None:
        self.config = config if config is not None else DatabaseConfig()
        self._per_loop: dict[asyncio.AbstractEventLoop, _LoopResources] = {}

    def __repr__(self) -> str:
        return f"DatabaseManager({self.config.safe_description()})"

    def _resources(self) -> _LoopResources:
        loop = asyncio.get_running_loop()
        resources = self._per_loop.get(loop)
        if resources is None:
            self._forget_closed_loops()
            resources = self._create_resources(loop)
            closer = self._release_on_close(loop)
            # Run it to its ``yield`` now: the loop registers it (its first-iteration hook) and
            # closes it at shutdown, which runs the ``finally`` on the still-running loop.
            with contextlib.suppress(StopIteration):
                closer.asend(None).send(None)
            resources.closer = closer
            self._per_loop[loop] = resources
        return resources

    async def _release_on_close(
        self, loop: asyncio.AbstractEventLoop
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            resources = self._per_loop.pop(loop, None)
            if resources is not None:
                await resources.close()
                log.debug("database.engine_disposed", extra={"reason": "event loop shut down"})

    def _forget_closed_loops(self) -> None:
        # A loop closed without shutting down its async generators cannot run a dispose any
        # more; dropping the references lets the garbage collector close its sockets.
        # list() copies the keys in one step, so loops other threads add meanwhile do no harm.
        for loop in [loop for loop in list(self._per_loop) if loop.is_closed()]:
            self._per_loop.pop(loop, None)
            log.debug("database.engine_dropped", extra={"reason": "event loop closed"})

    def _create_resources(self, loop: asyncio.AbstractEventLoop) -> _LoopResources:
        cfg = self.config
        options: dict[str, Any] = {
            "pool_size": cfg.db_pool_size,
            "max_overflow": cfg.db_max_overflow,
            "pool_timeout": cfg.db_pool_timeout_s,
            "pool_recycle": cfg.db_pool_recycle_s,
            "pool_pre_ping": False,  # CheckoutTest below (biz2bricks_core._pool_checks)
            "echo": cfg.db_echo,
        }
        connector = None
        if cfg.uses_connector:
            from google.cloud.sql.connector import Connector, IPTypes

            connector = Connector(loop=loop, refresh_strategy="lazy")
            instance = cfg.cloud_sql_instance or ""
            ip_type = IPTypes[cfg.cloud_sql_ip_type.upper()]

            async def connect() -> Any:
                return await connector.connect_async(
                    instance,
                    "asyncpg",
                    user=cfg.database_user,
                    password=cfg.database_password.get_secret_value(),
                    db=cfg.database_name,
                    ip_type=ip_type,
                )

            options["async_creator"] = connect
        engine = create_async_engine(cfg.sqlalchemy_url(), **options)
        event.listen(engine.sync_engine, "handle_error", self._refused_as_access_error)
        checks = CheckoutTest(engine) if cfg.db_pool_pre_ping else None
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        log.debug("database.engine_created", extra={"database": cfg.safe_description()})
        return _LoopResources(
            engine=engine, sessions=sessions, connector=connector, checkout_test=checks
        )

    def _refused_as_access_error(self, context: ExceptionContext) -> BaseException | None:
        # A refused connection (no such database or role, wrong password) is a setting to fix,
        # not an outage: one error that names the fix, for every caller of this manager.
        return access_error(self.config, context.original_exception)

    @property
    def engine(self) -> AsyncEngine:
        """The engine of the running event loop."""
        return self._resources().engine

    @property
    def session_factory(self) -> async_sessionmaker[AsyncSession]:
        """The session factory of the running event loop."""
        return self._resources().sessions

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session that commits when the block succeeds and rolls back when it raises."""
        async with self.session_factory() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[Any]:
        """A pooled connection's asyncpg driver, for hot paths (limit checks, the consumer).

        Statements on it bypass SQLAlchemy's execute and result layers (~0.3-1 ms per call
        here) and autocommit unless run inside its own ``transaction()``. The pool still owns
        the connection; if the driver raises a disconnect error the connection is invalidated
        (SQLAlchemy does not see the driver's errors), so the pool never hands it out again.
        """
        resources = self._resources()
        pooled = resources.engine.connect()
        checked_out = DRIVER_CHECKOUT.set(True)  # this checkout may skip its test
        try:
            await pooled.start()
        finally:
            DRIVER_CHECKOUT.reset(checked_out)
        try:
            raw = await pooled.get_raw_connection()
            connection = raw.driver_connection  # invalidating detaches it from raw
            try:
                yield connection
            except (*DRIVER_DISCONNECT_ERRORS, OSError, asyncpg.InternalClientError) as error:
                driver_fault = isinstance(error, asyncpg.InternalClientError)
                # Read before invalidating, which closes the connection.
                client_fault = driver_fault and not connection_lost(connection, error)
                await pooled.invalidate()
                if client_fault:
                    raise  # a client-side fault: the connection is replaced all the same
                if resources.checkout_test is not None:
                    resources.checkout_test.lost()
                if driver_fault:  # the server ended it: a disconnect, as callers know them
                    lost = asyncpg.exceptions.ConnectionDoesNotExistError(
                        f"the connection was lost: {error}"
                    )
                    raise lost from error
                raise
            mark_alive(raw.info)
        finally:
            await pooled.close()

    async def get_session(self) -> AsyncIterator[AsyncSession]:
        """FastAPI dependency: ``Depends(db.get_session)``; same commit/rollback rules."""
        async with self.session() as session:
            yield session

    def unavailable(self, error: BaseException) -> DatabaseUnavailableError:
        """The package error for ``error``: names the database, the cause and how to fix it."""
        if isinstance(error, DatabaseUnavailableError):
            return error  # already names its fix (a refused database, role or password)
        if self.config.uses_connector:
            fix = "check CLOUD_SQL_INSTANCE, CLOUD_SQL_IP_TYPE and the credentials"
        else:
            fix = (
                "start it (a local server: pg_ctlcluster <version> main start) "
                "or point DATABASE_URL (or DATABASE_HOST/DATABASE_PORT) at a running server"
            )
        return DatabaseUnavailableError(
            f"PostgreSQL at {self.config.safe_description()} is not reachable "
            f"({type(error).__name__}: {error}); {fix}"
        )

    @asynccontextmanager
    async def unavailable_as_error(self) -> AsyncIterator[None]:
        """Turn every "the database did not answer" error inside the block into
        DatabaseUnavailableError (the original stays as ``__cause__``)."""
        try:
            yield
        except DATABASE_DOWN_ERRORS as error:
            raise self.unavailable(error) from error

    async def check(self) -> None:
        """Run ``SELECT 1``; raise DatabaseUnavailableError naming the database if it fails."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as error:
            raise self.unavailable(error) from error

    async def dispose(self) -> None:
        """Close the pool of the running loop (and its Cloud SQL connector)."""
        resources = self._per_loop.get(asyncio.get_running_loop())
        if resources is not None and resources.closer is not None:
            await resources.closer.aclose()  # its ``finally`` pops and closes the resources


_default_manager: DatabaseManager | None = None


def get_database_manager() -> DatabaseManager:
    """The original library's accessor: a process-wide DatabaseManager built on first use.

    Project code receives its DatabaseManager explicitly; this exists for applications that
    used ``biz2bricks-core`` this way.
    """
    global _default_manager
    if _default_manager is None:
        _default_manager = DatabaseManager(DatabaseConfig())
    return _default_manager
