"""DatabaseManager against real PostgreSQL: commit, rollback, per-loop engines, errors."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from biz2bricks_core import (
    DatabaseConfig,
    DatabaseManager,
    DatabaseUnavailableError,
    UsageService,
    _pool_checks,
)
from biz2bricks_core.database import DRIVER_DISCONNECT_ERRORS
from biz2bricks_core.models import OrganizationModel
from tests.support import libpq_url
from tests.tcp_proxy import TcpProxy


async def test_session_commits_when_the_block_succeeds(db: DatabaseManager) -> None:
    org_id = uuid.uuid4()
    async with db.session() as session:
        session.add(OrganizationModel(id=org_id, name="committed"))
    async with db.session() as session:
        assert (await session.get(OrganizationModel, org_id)) is not None


async def test_session_rolls_back_when_the_block_raises(db: DatabaseManager) -> None:
    org_id = uuid.uuid4()

    async def add_then_fail() -> None:
        async with db.session() as session:
            session.add(OrganizationModel(id=org_id, name="rolled back"))
            await session.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await add_then_fail()
    async with db.session() as session:
        assert (await session.get(OrganizationModel, org_id)) is None


async def test_get_session_dependency_commits(db: DatabaseManager) -> None:
    org_id = uuid.uuid4()
    dependency = db.get_session()
    session = await anext(dependency)
    session.add(OrganizationModel(id=org_id, name="via dependency"))
    with pytest.raises(StopAsyncIteration):
        await anext(dependency)
    async with db.session() as check:
        assert (
            await check.scalar(select(OrganizationModel.name).where(OrganizationModel.id == org_id))
        ) == "via dependency"


async def test_a_second_event_loop_gets_its_own_engine(db: DatabaseManager) -> None:
    # Given the manager already used on this loop
    async with db.session() as session:
        assert (await session.scalar(text("SELECT 1"))) == 1
    results: list[object] = []

    async def use_from_other_loop() -> None:
        async with db.session() as session:
            results.append(await session.scalar(text("SELECT 2")))
        await db.dispose()

    # When a thread with its own loop uses the same manager
    thread = threading.Thread(target=lambda: asyncio.run(use_from_other_loop()))
    thread.start()
    thread.join(timeout=30)
    # Then it works there and still works here
    assert results == [2]
    async with db.session() as session:
        assert (await session.scalar(text("SELECT 3"))) == 3


async def test_unreachable_database_names_the_service_and_the_fix() -> None:
    manager = DatabaseManager(
        DatabaseConfig(database_url="postgresql://nobody@127.0.0.1:1/none", db_pool_timeout_s=2)
    )
    with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1.*DATABASE_URL"):
        await manager.check()
    await manager.dispose()


async def test_a_connection_broken_under_the_driver_is_not_handed_out_again(
    database_url: str,
) -> None:
    # One pooled connection, no pre-ping: only invalidation keeps a dead one out of the pool.
    proxy = TcpProxy(database_url)
    await proxy.start()
    db = DatabaseManager(
        DatabaseConfig(
            database_url=proxy.url.render_as_string(hide_password=False),
            db_pool_size=1,
            db_max_overflow=0,
            db_pool_pre_ping=False,
        )
    )
    try:
        async with db.driver() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        await proxy.cut()  # breaks the pooled connection
        await proxy.start()  # and accepts new ones
        with pytest.raises((*DRIVER_DISCONNECT_ERRORS, OSError)):
            async with db.driver() as conn:
                await conn.fetchval("SELECT 1")
        async with db.driver() as conn:
            assert await conn.fetchval("SELECT 2") == 2
    finally:
        await db.dispose()
        await proxy.cut()


async def _terminate_backend(database_url: str, pid: int) -> None:
    admin = await asyncpg.connect(libpq_url(make_url(database_url)))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


@asynccontextmanager
async def _used_once(
    database_url: str, bypass_s: float, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[DatabaseManager, int]]:
    """A manager of one pooled connection, with this bypass window, that the driver path has
    used once; and that connection's backend pid."""
    monkeypatch.setattr(_pool_checks, "PING_BYPASS_S", bypass_s)
    db = DatabaseManager(DatabaseConfig(database_url=database_url, db_pool_size=1))
    try:
        async with db.driver() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        yield db, pid
    finally:
        await db.dispose()


async def test_an_idle_connection_the_server_dropped_is_replaced_at_checkout(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one pooled connection, tested at checkout, that the server then terminates
    async with _used_once(database_url, 0.05, monkeypatch) as (db, first):
        await _terminate_backend(database_url, first)
        await asyncio.sleep(0.1)  # idle beyond the bypass window
        # When it is checked out again, Then the test finds it dead and a new one serves
        async with db.driver() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") != first


async def test_a_connection_used_just_now_is_not_tested_and_a_dead_one_costs_one_attempt(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a connection the driver path used within the bypass window, then terminated by
    # the server while idle in the pool
    pings = 0
    async with _used_once(database_url, 60.0, monkeypatch) as (db, first):

        def count_ping(*_: object) -> None:
            nonlocal pings
            pings += 1

        monkeypatch.setattr(db.engine.sync_engine.dialect, "do_ping", count_ping)
        await _terminate_backend(database_url, first)
        # When it is checked out: no ping; the statement fails as a disconnect
        with pytest.raises(DRIVER_DISCONNECT_ERRORS):
            async with db.driver() as conn:
                await conn.fetchval("SELECT 1")
        assert pings == 0
        # Then that connection was invalidated: the next attempt is served by a new one, which
        # needs no test either (it was just made)
        async with db.driver() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") != first
        assert pings == 0


async def test_a_session_checks_out_a_connection_the_driver_used_just_now_tested(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a connection the driver path used within the bypass window, then terminated
    async with _used_once(database_url, 60.0, monkeypatch) as (db, first):
        await _terminate_backend(database_url, first)
        # When a session checks it out (sessions have no fallback): tested, replaced
        async with db.session() as session:
            assert (await session.scalar(text("SELECT pg_backend_pid()"))) != first
        # And a connection a session used is tested when the driver path takes it next
        async with db.session() as session:
            second = await session.scalar(text("SELECT pg_backend_pid()"))
        await _terminate_backend(database_url, second)
        async with db.driver() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") not in (first, second)


async def test_after_one_dead_connection_every_connection_marked_before_is_tested(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given three pooled connections the driver path used just now, all terminated at once
    monkeypatch.setattr(_pool_checks, "PING_BYPASS_S", 60.0)
    db = DatabaseManager(
        DatabaseConfig(database_url=database_url, db_pool_size=3, db_max_overflow=0)
    )
    try:
        async with db.driver() as a, db.driver() as b, db.driver() as c:
            pids = [await x.fetchval("SELECT pg_backend_pid()") for x in (a, b, c)]
        for pid in pids:
            await _terminate_backend(database_url, pid)
        # When the first checkout finds its connection dead (one failed attempt)
        with pytest.raises(DRIVER_DISCONNECT_ERRORS):
            async with db.driver() as conn:
                await conn.fetchval("SELECT 1")
        # Then the others are tested before use, not handed out dead one by one
        for _ in range(4):
            async with db.driver() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") not in pids
    finally:
        await db.dispose()


async def test_only_a_lost_protocol_counts_as_a_lost_connection(database_url: str) -> None:
    conn = await asyncpg.connect(libpq_url(make_url(database_url)))
    try:
        # A client-side fault of the driver is not a lost connection (it is not "down")
        fault = asyncpg.InternalClientError("no encoder for OID 1234")
        assert not _pool_checks.connection_lost(conn, fault)
        # A protocol left mid-message is
        stuck = asyncpg.InternalClientError(
            "cannot switch to state 11; another operation (2) is in progress"
        )
        assert _pool_checks.connection_lost(conn, stuck)
    finally:
        await conn.close()
    # And so is any error on a closed connection
    assert _pool_checks.connection_lost(conn, fault)


def _connections_to(url: str) -> int:
    """Backends connected to the database of ``url`` (this counting connection excluded)."""

    async def count() -> int:
        conn = await asyncpg.connect(libpq_url(make_url(url)))
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        finally:
            await conn.close()

    return asyncio.run(count())


def loops_with_an_engine(manager: DatabaseManager) -> int:
    """How many event loops hold an engine (and a pool) of ``manager``."""
    return len(manager._per_loop)


def _settled_connections(url: str, at_most: int, timeout_s: float = 10.0) -> int:
    """The connection count once it is at most ``at_most`` (backends exit a moment after the
    client closes), or the last count seen after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (seen := _connections_to(url)) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def test_asyncio_run_calls_never_hold_more_connections_than_the_pool(database_url: str) -> None:
    # Given a manager with a pool of 2, used by the application through asyncio.run per call
    manager = DatabaseManager(
        DatabaseConfig(database_url=database_url, db_pool_size=2, db_max_overflow=0)
    )
    usage = UsageService(manager)
    org = asyncio.run(_provision(usage))
    baseline = _settled_connections(database_url, at_most=0, timeout_s=0)
    peak = 0
    # When 30 calls each run on a loop of their own
    for _ in range(30):
        decision = asyncio.run(usage.check_token_limit(org))
        assert decision.reason == "ok"
        seen = _settled_connections(database_url, at_most=baseline + 2, timeout_s=1)
        peak = max(peak, seen - baseline)
    # Then the database never saw more than the pool, and no engine outlives its loop
    assert peak <= 2
    assert loops_with_an_engine(manager) == 0
    assert _settled_connections(database_url, at_most=baseline) == baseline


async def _provision(usage: UsageService) -> uuid.UUID:
    org = uuid.uuid4()
    await usage.provision_organization(org, "free")
    return org


# A loop closed by hand cannot run a graceful close: its connections are dropped for the garbage
# collector, which warns about them. The collection is forced inside this test.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_loop_closed_without_shutdown_is_forgotten_when_the_next_loop_starts(
    database_url: str,
) -> None:
    # Given a loop that used the manager and was closed by hand (no async generator shutdown)
    manager = DatabaseManager(DatabaseConfig(database_url=database_url))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(manager.check())
    loop.close()
    assert loops_with_an_engine(manager) == 1
    # When the manager is used on a new loop
    asyncio.run(manager.check())
    # Then the dead loop's engine is gone, and the new loop's engine went with its loop
    assert loops_with_an_engine(manager) == 0
    gc.collect()
