"""FastAPI integration (``biz2bricks-fastapi``): a lifespan, ``Depends`` providers, error answers.

::

    from biz2bricks_fastapi import install_error_handlers, usage_lifespan

    app = FastAPI(lifespan=usage_lifespan())
    install_error_handlers(app)

The lifespan runs inside each server process (after gunicorn's fork, in each uvicorn worker):
it builds the DatabaseManager, UsageService and UsageProducer from the environment there,
warms the pool, and at shutdown closes the producer first (publish or spool what it holds),
then the pool. It sits above biz2bricks-core and the producer: neither imports it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from biz2bricks_core.config import DatabaseConfig
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import (
    Biz2BricksError,
    DatabaseUnavailableError,
    GrantConflictError,
    InvalidArgumentError,
    UnknownGrantError,
    UnknownOrganizationError,
)
from biz2bricks_core.usage_service import UsageService, UsageServiceSettings
from biz2bricks_producer import ProducerSettings, UsageProducer

__all__ = [
    "DatabaseDep",
    "LimitExceededError",
    "ProducerDep",
    "SessionDep",
    "UsageDep",
    "UsageResources",
    "get_database",
    "get_producer",
    "get_session",
    "get_usage_resources",
    "get_usage_service",
    "install_error_handlers",
    "require_allowed",
    "usage_lifespan",
]

log = logging.getLogger(__name__)

AppLifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


@dataclass
class UsageResources:
    """What ``usage_lifespan`` built for this process; ``app.state.usage``."""

    db: DatabaseManager
    usage: UsageService
    producer: UsageProducer | None


def usage_lifespan(
    *,
    database: DatabaseConfig | None = None,
    service: UsageServiceSettings | None = None,
    producer: ProducerSettings | bool = True,
    warm_connections: int | None = None,
    close_timeout_s: float = 10.0,
    lifespan: AppLifespan | None = None,
) -> AppLifespan:
    """A FastAPI lifespan that owns the usage resources of the server process.

    Args:
        database: DatabaseConfig; default ``DatabaseConfig()`` read in the server process.
        service: UsageServiceSettings; default read from the environment.
        producer: ProducerSettings, True for ``ProducerSettings()`` (needs
            ``biz2bricks-producer``), or False for an app that records no usage (backend API).
        warm_connections: connections opened at start-up; default ``DB_POOL_SIZE``. A database
            that does not answer is logged (``usage.database_warmup_failed``) and the app starts:
            requests then get 503, or the fail-open answer of the token check.
        close_timeout_s: bound on the producer's close at shutdown; what it could not publish
            by then is in the spool.
        lifespan: the application's own lifespan, run inside this one.
    """

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        db = DatabaseManager(database if database is not None else DatabaseConfig())
        resources = UsageResources(db, UsageService(db, service), _make_producer(producer))
        app.state.usage = resources
        try:
            await _warm(db, warm_connections)
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            if resources.producer is not None:
                await asyncio.to_thread(resources.producer.close, close_timeout_s)
            await db.dispose()

    return run


def _make_producer(producer: ProducerSettings | bool) -> UsageProducer | None:
    if producer is False:
        return None
    return UsageProducer(ProducerSettings() if producer is True else producer)


async def _warm(db: DatabaseManager, connections: int | None) -> None:
    """Open the pool's connections now rather than on the first requests."""
    wanted = db.config.db_pool_size if connections is None else connections
    try:
        await db.check()
        async with AsyncExitStack() as held:
            for _ in range(wanted):  # held together, so the pool opens that many
                conn = await held.enter_async_context(db.engine.connect())
                await conn.execute(text("SELECT 1"))
    except Exception as error:
        cause = str(error)[:500]
        log.warning(
            "usage.database_warmup_failed: %s (the app starts; limit checks answer 503 or "
            "fail open until it answers)",
            cause,
            extra={"database": db.config.safe_description(), "error": cause},
        )


# -- Depends providers --


def get_usage_resources(request: Request) -> UsageResources:
    """The resources ``usage_lifespan`` made; a clear error if it is not the app's lifespan."""
    resources = getattr(request.app.state, "usage", None)
    if not isinstance(resources, UsageResources):
        raise RuntimeError(
            "biz2bricks_fastapi: no usage resources; create the app with "
            "FastAPI(lifespan=usage_lifespan())"
        )
    return resources


def get_database(request: Request) -> DatabaseManager:
    """``Depends(get_database)``: the process's DatabaseManager."""
    return get_usage_resources(request).db


def get_usage_service(request: Request) -> UsageService:
    """``Depends(get_usage_service)``: limit checks and storage reservations."""
    return get_usage_resources(request).usage


def get_producer(request: Request) -> UsageProducer:
    """``Depends(get_producer)``: the process's UsageProducer."""
    producer = get_usage_resources(request).producer
    if producer is None:
        raise RuntimeError("usage_lifespan(producer=False) made no UsageProducer")
    return producer


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """``Depends(get_session)``: a session that commits when the request succeeds."""
    async with get_usage_resources(request).db.session() as session:
        yield session


# Annotated parameters: ``async def f(usage: UsageDep, producer: ProducerDep)``.
DatabaseDep = Annotated[DatabaseManager, Depends(get_database)]
UsageDep = Annotated[UsageService, Depends(get_usage_service)]
ProducerDep = Annotated["UsageProducer", Depends(get_producer)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]


# -- denied decisions and errors as HTTP responses --


class Decision(Protocol):
    """What a limit check answers (LimitDecision; a token hold has the same fields)."""

    @property
    def allowed(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def used(self) -> int: ...
    @property
    def limit(self) -> int | None: ...
    @property
    def remaining(self) -> int | None: ...


class LimitExceededError(Biz2BricksError):
    """A limit check said no; the error handler answers 429, 413 or 503 from its reason."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


D = TypeVar("D", bound=Decision)


def require_allowed(decision: D) -> D:
    """Return an allowed decision; raise LimitExceededError for a denied one."""
    if not decision.allowed:
        raise LimitExceededError(decision)
    return decision


def status_for(decision: Decision) -> int:
    """The HTTP status of a denied decision: 503 database down, 413 storage, 429 tokens."""
    if decision.reason.startswith("database_unavailable"):
        return 503
    if decision.reason == "storage_limit_exceeded":
        return 413
    return 429


def install_error_handlers(app: FastAPI) -> None:
    """Answer the package's errors with their HTTP status and a JSON body saying why."""
    app.add_exception_handler(LimitExceededError, _limit_exceeded)  # type: ignore[arg-type]
    app.add_exception_handler(UnknownOrganizationError, _error(404, "unknown_organization"))
    app.add_exception_handler(InvalidArgumentError, _error(422, "invalid_argument"))
    app.add_exception_handler(UnknownGrantError, _error(404, "unknown_grant"))
    app.add_exception_handler(GrantConflictError, _error(409, "grant_conflict"))
    app.add_exception_handler(DatabaseUnavailableError, _error(503, "database_unavailable"))


def _error(status: int, code: str) -> Callable[[Request, Exception], Any]:
    async def handle(request: Request, error: Exception) -> JSONResponse:
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse({"error": code, "detail": str(error)}, status, headers=headers)

    return handle


async def _limit_exceeded(request: Request, error: LimitExceededError) -> JSONResponse:
    decision = error.decision
    status = status_for(decision)
    period_end: datetime | None = getattr(decision, "period_end", None)
    body = {
        "error": decision.reason,
        "used": decision.used,
        "limit": decision.limit,
        "remaining": decision.remaining,
        "period_end": period_end.isoformat() if period_end is not None else None,
    }
    headers = None
    if status == 503:
        headers = {"Retry-After": "5"}
    elif status == 429 and period_end is not None:
        seconds = math.ceil((period_end - datetime.now(UTC)).total_seconds())
        headers = {"Retry-After": str(max(seconds, 1))}
    return JSONResponse(body, status, headers=headers)
