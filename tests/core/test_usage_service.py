"""UsageService against real PostgreSQL: every limit branch, storage under concurrency, credits."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from biz2bricks_core import (
    DatabaseConfig,
    DatabaseManager,
    DatabaseUnavailableError,
    InvalidArgumentError,
    UnknownOrganizationError,
    UnknownPlanError,
    UsageService,
    UsageServiceSettings,
)
from biz2bricks_core.models import DocumentModel
from biz2bricks_core.periods import period_bounds
from tests.factories import counters, provisioned_org
from tests.tcp_proxy import TcpProxy

MIB = 1024**2
GIB = 1024**3


async def set_limits(db: DatabaseManager, org: uuid.UUID, **values: object) -> None:
    assignments = ", ".join(f"{k} = :{k}" for k in values)
    async with db.session() as session:
        await session.execute(
            text(f"UPDATE usage_limits SET {assignments} WHERE organization_id = :org"),
            {**values, "org": org},
        )


async def audit_actions(db: DatabaseManager, org: uuid.UUID) -> list[str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT action FROM audit_logs WHERE organization_id = :o ORDER BY id"),
            {"o": org},
        )
        return [r.action for r in rows]


# provisioning


async def test_provisioning_creates_limits_from_the_plan(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="starter")
    row = await counters(db, org)
    assert (row["plan"], row["token_limit"], row["storage_limit_bytes"]) == (
        "starter",
        2_000_000,
        10 * GIB,
    )
    assert (row["period_start"], row["period_end"]) == period_bounds(datetime.now(UTC))
    assert row["tokens_used_period"] == 0


async def test_provisioning_again_changes_the_plan_and_keeps_the_counters(
    db: DatabaseManager,
) -> None:
    org = await provisioned_org(db, plan="free")
    await set_limits(db, org, tokens_used_period=500, storage_used_bytes=7)
    await UsageService(db).provision_organization(org, plan="pro")
    await UsageService(db).provision_organization(org, plan="pro")
    row = await counters(db, org)
    assert (row["plan"], row["token_limit"], row["soft_limit"]) == ("pro", 20_000_000, True)
    assert (row["tokens_used_period"], row["storage_used_bytes"]) == (500, 7)
    assert (await audit_actions(db, org)).count("plan.provision") == 3


async def test_an_unknown_plan_is_refused_naming_the_known_ones(db: DatabaseManager) -> None:
    with pytest.raises(UnknownPlanError, match=r"platinum.*free"):
        await UsageService(db).provision_organization(uuid.uuid4(), plan="platinum")


# token checks


async def test_usage_within_the_limit_is_allowed(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    await set_limits(db, org, tokens_used_period=60_000, counters_updated_at=datetime.now(UTC))
    decision = await UsageService(db).check_token_limit(org, estimated_tokens=40_000)
    assert decision.allowed
    assert (decision.used, decision.limit, decision.remaining) == (60_000, 100_000, 40_000)
    assert decision.reason == "ok"
    assert decision.period_end == period_bounds(datetime.now(UTC))[1]
    assert decision.counter_age_s is not None
    assert 0 <= decision.counter_age_s < 60


async def test_usage_beyond_a_hard_limit_is_refused(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    await set_limits(db, org, tokens_used_period=99_000)
    decision = await UsageService(db).check_token_limit(org, estimated_tokens=2_000)
    assert not decision.allowed
    assert (decision.reason, decision.remaining) == ("token_limit_exceeded", 1_000)


async def test_a_soft_limit_allows_with_a_warning_reason(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="pro")
    await set_limits(db, org, tokens_used_period=25_000_000)
    decision = await UsageService(db).check_token_limit(org)
    assert decision.allowed
    assert (decision.reason, decision.remaining) == ("soft_limit_exceeded", 0)


async def test_an_unlimited_plan_is_always_allowed(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="business")
    await set_limits(db, org, tokens_used_period=10**12)
    decision = await UsageService(db).check_token_limit(org, estimated_tokens=10**9)
    assert decision.allowed
    assert (decision.limit, decision.remaining, decision.reason) == (None, None, "unlimited")


async def test_a_period_that_has_ended_counts_as_empty(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    start, end = period_bounds(datetime.now(UTC) - timedelta(days=40))
    await set_limits(db, org, period_start=start, period_end=end, tokens_used_period=100_000)
    decision = await UsageService(db).check_token_limit(org, estimated_tokens=10)
    assert decision.allowed
    assert decision.used == 0


async def test_credits_extend_the_allowance_and_granting_is_audited(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    await set_limits(db, org, tokens_used_period=100_000)
    service = UsageService(db)
    assert not (await service.check_token_limit(org, estimated_tokens=1)).allowed
    grant = await service.grant_credits(org, 50_000, reason="promo")
    assert (grant.tokens, grant.remaining, grant.reason) == (50_000, 50_000, "promo")
    decision = await service.check_token_limit(org, estimated_tokens=50_000)
    assert decision.allowed
    assert decision.limit == 150_000
    assert "credits.grant" in await audit_actions(db, org)


@pytest.mark.parametrize("bad", ["not-a-uuid", "", 42])
async def test_a_non_uuid_organization_is_an_argument_error(
    db: DatabaseManager, bad: object
) -> None:
    with pytest.raises(InvalidArgumentError, match="organization_id"):
        await UsageService(db).check_token_limit(bad)  # type: ignore[arg-type]


async def test_an_unknown_organization_is_never_silently_allowed(db: DatabaseManager) -> None:
    service = UsageService(db)
    with pytest.raises(UnknownOrganizationError):
        await service.check_token_limit(uuid.uuid4())
    with pytest.raises(UnknownOrganizationError):
        await service.reserve_storage(uuid.uuid4(), 1)
    with pytest.raises(UnknownOrganizationError):
        await service.release_storage(uuid.uuid4(), 1)
    with pytest.raises(UnknownOrganizationError):
        await service.grant_credits(uuid.uuid4(), 1)


async def test_negative_amounts_are_argument_errors(db: DatabaseManager) -> None:
    org = await provisioned_org(db)
    service = UsageService(db)
    with pytest.raises(InvalidArgumentError, match="estimated_tokens"):
        await service.check_token_limit(org, estimated_tokens=-1)
    with pytest.raises(InvalidArgumentError, match="n_bytes"):
        await service.reserve_storage(org, -5)
    with pytest.raises(InvalidArgumentError, match="n_bytes"):
        await service.release_storage(org, -5)
    with pytest.raises(InvalidArgumentError, match="tokens"):
        await service.grant_credits(org, 0)


async def test_database_down_fails_open_for_tokens_and_closed_for_storage() -> None:
    down = DatabaseManager(
        DatabaseConfig(database_url="postgresql://x@127.0.0.1:1/none", db_pool_timeout_s=1)
    )
    service = UsageService(down)
    org = uuid.uuid4()
    tokens = await service.check_token_limit(org)
    storage = await service.reserve_storage(org, 10)
    assert (tokens.allowed, tokens.reason) == (True, "database_unavailable_fail_open")
    assert (storage.allowed, storage.reason) == (False, "database_unavailable_fail_closed")
    assert service.counters["token_fail_open"] == 1
    assert service.counters["storage_fail_closed"] == 1
    strict = UsageService(
        down, UsageServiceSettings(token_check_fail_open=False, storage_fail_open=True)
    )
    assert not (await strict.check_token_limit(org)).allowed
    assert (await strict.reserve_storage(org, 1)).allowed
    await down.dispose()


async def test_a_limit_check_with_the_database_down_says_why_under_plain_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a database nobody listens on and plain logging (no configure_logging)
    down = DatabaseManager(
        DatabaseConfig(database_url="postgresql://x@127.0.0.1:1/none", db_pool_timeout_s=1)
    )
    org = uuid.uuid4()
    with caplog.at_level(logging.WARNING):
        # When a token check fails open
        await UsageService(down).check_token_limit(org)
    await down.dispose()
    # Then the line's own text says what was decided, for whom, and why (the fix named)
    [message] = [
        r.getMessage() for r in caplog.records if "limit_check_database_down" in r.getMessage()
    ]
    assert message.startswith("usage.limit_check_database_down: token check of organization")
    assert str(org) in message
    assert "allowed (fail open)" in message
    assert "127.0.0.1:1" in message
    assert "not reachable" in message


async def test_every_other_coroutine_raises_database_unavailable_when_the_database_is_down() -> (
    None
):
    # Given a database nobody listens on
    down = DatabaseManager(
        DatabaseConfig(database_url="postgresql://x@127.0.0.1:1/none", db_pool_timeout_s=1)
    )
    service = UsageService(down)
    org = uuid.uuid4()
    calls = {
        "release_storage": lambda: service.release_storage(org, 10),
        "get_usage": lambda: service.get_usage(org),
        "provision_organization": lambda: service.provision_organization(org, "free"),
        "grant_credits": lambda: service.grant_credits(org, 10),
    }
    try:
        for name, call in calls.items():
            # When each is called, Then it raises the package error naming the database
            with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1") as raised:
                await call()
            assert isinstance(raised.value.__cause__, OSError), name
    finally:
        await down.dispose()


async def test_a_connection_dropped_mid_request_is_a_database_outage(
    db: DatabaseManager, database_url: str
) -> None:
    # The check runs on the asyncpg driver, whose own errors SQLAlchemy never wraps.
    org = await provisioned_org(db)
    proxy = TcpProxy(database_url)
    await proxy.start()
    proxied = DatabaseManager(
        DatabaseConfig(
            database_url=proxy.url.render_as_string(hide_password=False),
            db_pool_size=1,
            db_max_overflow=0,
            db_pool_pre_ping=False,
        )
    )
    service = UsageService(proxied)
    try:
        assert (await service.check_token_limit(org)).reason == "ok"
        await proxy.cut()  # breaks the pooled connection under the next check
        decision = await service.check_token_limit(org)
        assert (decision.allowed, decision.reason) == (True, "database_unavailable_fail_open")
        assert service.counters["token_fail_open"] == 1
    finally:
        await proxied.dispose()
        await proxy.cut()


# storage


async def test_a_reservation_that_fits_is_added_and_audited(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    decision = await UsageService(db).reserve_storage(org, 100 * MIB)
    assert decision.allowed
    assert (decision.used, decision.limit, decision.remaining) == (100 * MIB, GIB, GIB - 100 * MIB)
    assert (await counters(db, org))["storage_used_bytes"] == 100 * MIB
    assert "storage.reserve" in await audit_actions(db, org)


async def test_a_reservation_beyond_the_limit_changes_nothing(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await service.reserve_storage(org, GIB - 10)
    decision = await service.reserve_storage(org, 11)
    assert not decision.allowed
    assert (decision.reason, decision.used, decision.remaining) == (
        "storage_limit_exceeded",
        GIB - 10,
        10,
    )
    assert (await counters(db, org))["storage_used_bytes"] == GIB - 10
    assert (await audit_actions(db, org)).count("storage.reserve") == 1


async def test_release_never_goes_below_zero(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    await service.reserve_storage(org, 100)
    await service.release_storage(org, 40)
    assert (await counters(db, org))["storage_used_bytes"] == 60
    await service.release_storage(org, 1000)
    assert (await counters(db, org))["storage_used_bytes"] == 0
    assert (await audit_actions(db, org)).count("storage.release") == 2


async def test_concurrent_reservations_never_exceed_the_limit(db: DatabaseManager) -> None:
    # Given a 1 GiB limit and 100 concurrent reservations of 15 MiB (1.46 GiB together)
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    decisions = await asyncio.gather(*(service.reserve_storage(org, 15 * MIB) for _ in range(100)))
    # Then exactly the ones that fit succeeded, and the counter is their sum
    granted = sum(d.allowed for d in decisions)
    assert granted == GIB // (15 * MIB)
    assert (await counters(db, org))["storage_used_bytes"] == granted * 15 * MIB <= GIB


async def test_storage_follows_live_documents_through_the_backend_flow(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="starter")
    service = UsageService(db)
    sizes = [5 * MIB, 12 * MIB, 700, 3 * GIB]
    documents = []
    for size in sizes:  # upload: reserve, then store the document row
        assert (await service.reserve_storage(org, size)).allowed
        async with db.session() as session:
            document = DocumentModel(organization_id=org, name=f"f{size}", size_bytes=size)
            session.add(document)
        documents.append(document)
    for document in documents[1:3]:  # delete: mark deleted, then release
        async with db.session() as session:
            await session.execute(
                text("UPDATE documents SET deleted_at = now() WHERE id = :d"), {"d": document.id}
            )
        await service.release_storage(org, document.size_bytes)
    async with db.engine.connect() as conn:
        live = (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(size_bytes), 0) FROM documents"
                    " WHERE organization_id = :o AND deleted_at IS NULL"
                ),
                {"o": org},
            )
        ).scalar_one()
    assert (await counters(db, org))["storage_used_bytes"] == live == 5 * MIB + 3 * GIB


async def test_usage_snapshot_reports_the_current_period(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="starter")
    await set_limits(db, org, tokens_used_period=1234, storage_used_bytes=99)
    snapshot = await UsageService(db).get_usage(org)
    assert (snapshot.plan, snapshot.tokens_used_period, snapshot.token_limit) == (
        "starter",
        1234,
        2_000_000,
    )
    assert (snapshot.storage_used_bytes, snapshot.storage_limit_bytes) == (99, 10 * GIB)
