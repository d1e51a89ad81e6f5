"""DatabaseManager: an async engine and session factory per event loop."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from biz2bricks_core.config import DatabaseConfig
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

# Every way "the database did not answer" surfaces, through SQLAlchemy or from the driver:
# what the limit checks fail open/closed on and what the consumer backs off and retries.
DATABASE_DOWN_ERRORS: Final = (
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


class DatabaseManager:
    """Owns the async engines of one database, one engine per running event loop.

    asyncpg connections belong to the loop that opened them, so a second loop (pytest, a worker
    thread) gets its own engine instead of a "Future attached to a different loop" error.
    """

    def __init__(self, config: DatabaseConfig | None = None) -> None:
        self.config = config if config is not None else DatabaseConfig()
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopResources] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"DatabaseManager({self.config.safe_description()})"

    def _resources(self) -> _LoopResources:
        loop = asyncio.get_running_loop()
        resources = self._per_loop.get(loop)
        if resources is None:
            resources = self._create_resources(loop)
            self._per_loop[loop] = resources
        return resources

    def _create_resources(self, loop: asyncio.AbstractEventLoop) -> _LoopResources:
        cfg = self.config
        options: dict[str, Any] = {
            "pool_size": cfg.db_pool_size,
            "max_overflow": cfg.db_max_overflow,
            "pool_timeout": cfg.db_pool_timeout_s,
            "pool_recycle": cfg.db_pool_recycle_s,
            "pool_pre_ping": cfg.db_pool_pre_ping,
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
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        log.debug("database.engine_created", extra={"database": cfg.safe_description()})
        return _LoopResources(engine=engine, sessions=sessions, connector=connector)

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
        async with self.engine.connect() as pooled:
            raw = await pooled.get_raw_connection()
            try:
                yield raw.driver_connection
            except (*DRIVER_DISCONNECT_ERRORS, OSError):
                await pooled.invalidate()
                raise

    async def get_session(self) -> AsyncIterator[AsyncSession]:
        """FastAPI dependency: ``Depends(db.get_session)``; same commit/rollback rules."""
        async with self.session() as session:
            yield session

    async def check(self) -> None:
        """Run ``SELECT 1``; raise DatabaseUnavailableError naming the database if it fails."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as error:
            raise DatabaseUnavailableError(
                f"PostgreSQL at {self.config.safe_description()} is not reachable "
                f"({type(error).__name__}: {error}). Start it (for a local server: "
                "pg_ctlcluster <version> main start) or set DATABASE_URL."
            ) from error

    async def dispose(self) -> None:
        """Close the pool of the running loop (and its Cloud SQL connector)."""
        loop = asyncio.get_running_loop()
        resources = self._per_loop.pop(loop, None)
        if resources is None:
            return
        await resources.engine.dispose()
        if resources.connector is not None:
            await resources.connector.close_async()


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
