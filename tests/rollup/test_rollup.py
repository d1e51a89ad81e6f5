"""Rollup and reconcile against real PostgreSQL: promises 2 and 5."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_core.event_ids import event_id_month
from biz2bricks_core.models import DocumentModel
from biz2bricks_rollup.__main__ import main as rollup_main
from biz2bricks_rollup.reconcile import ReservedStorage, find_drift, repair, reserved_only
from biz2bricks_rollup.rollup import RollupBusyError, rollup_lock, run_rollup
from biz2bricks_rollup.server import RollupServer, ServeSettings
from tests.factories import provisioned_org

MODELS = [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5"), ("google", "gemini-2.5-pro")]


async def insert_events(
    db: DatabaseManager, org: uuid.UUID, day: date, n: int, seed: int = 0
) -> None:
    """``n`` events of the organization spread over the day and the models."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    async with db.session() as session:
        for i in range(n):
            provider, model = MODELS[(i + seed) % len(MODELS)]
            await session.execute(
                text(
                    "INSERT INTO usage_events (event_id, organization_id, occurred_at, provider,"
                    " model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
                    " cost_usd, id_month)"
                    " VALUES (:e, :o, :t, :p, :m, :i, :out, :cr, :cw, :c, :k)"
                ),
                {
                    "e": (event_id := uuid.uuid4()),
                    "k": event_id_month(event_id),
                    "o": org,
                    "t": start + timedelta(minutes=37 * i % 1440),
                    "p": provider,
                    "m": model,
                    "i": 100 + i + seed,
                    "out": 10 + i,
                    "cr": i % 7,
                    "cw": i % 3,
                    "c": Decimal("0.000123") * (i + 1),
                },
            )


async def summaries(db: DatabaseManager, orgs: list[uuid.UUID], day: date) -> set[tuple[Any, ...]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT organization_id, provider, model, request_count, input_tokens,"
                " output_tokens,"
                " cache_read_tokens, cache_write_tokens, cost_usd FROM usage_daily_summaries"
                " WHERE day = :d AND organization_id = ANY(:o)"
            ),
            {"d": day, "o": orgs},
        )
        return {tuple(r) for r in rows}


async def group_by(db: DatabaseManager, orgs: list[uuid.UUID], day: date) -> set[tuple[Any, ...]]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT organization_id, provider, model, count(*), sum(input_tokens),"
                " sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens),"
                " sum(cost_usd)"
                " FROM usage_events WHERE occurred_at >= :s AND occurred_at < :e"
                " AND organization_id = ANY(:o) GROUP BY 1, 2, 3"
            ),
            {"s": start, "e": start + timedelta(days=1), "o": orgs},
        )
        return {tuple(r) for r in rows}


def a_past_day() -> date:
    """A distinct day well in the past per test, so tests never share a day's rows."""
    return date(2024, 1, 1) + timedelta(days=uuid.uuid4().int % 600)


async def test_summaries_equal_a_group_by_over_the_days_events(db: DatabaseManager) -> None:
    orgs = [await provisioned_org(db) for _ in range(3)]
    day = a_past_day()
    for i, org in enumerate(orgs):
        await insert_events(db, org, day, 20 + i, seed=i)
        await insert_events(db, org, day + timedelta(days=1), 5, seed=i)
    results = await run_rollup(db, [day, day + timedelta(days=1)])
    assert [r.day for r in results] == [day, day + timedelta(days=1)]
    for d in (day, day + timedelta(days=1)):
        expected = await group_by(db, orgs, d)
        assert await summaries(db, orgs, d) == expected
        assert len(expected) == 9


async def test_running_twice_changes_nothing(db: DatabaseManager) -> None:
    org = await provisioned_org(db)
    day = a_past_day()
    await insert_events(db, org, day, 12)
    await run_rollup(db, [day])
    before = await summaries(db, [org], day)
    async with db.engine.connect() as conn:
        stamps = list(
            await conn.execute(
                text("SELECT updated_at FROM usage_daily_summaries WHERE organization_id = :o"),
                {"o": org},
            )
        )
    [again] = await run_rollup(db, [day])
    assert again.written == 0
    assert await summaries(db, [org], day) == before
    async with db.engine.connect() as conn:
        assert (
            list(
                await conn.execute(
                    text("SELECT updated_at FROM usage_daily_summaries WHERE organization_id = :o"),
                    {"o": org},
                )
            )
            == stamps
        )


async def test_a_late_event_is_in_the_summaries_after_the_next_due_run(
    db: DatabaseManager,
) -> None:
    # Given a past day rolled up
    org = await provisioned_org(db)
    day = a_past_day()
    await insert_events(db, org, day, 6)
    await run_rollup(db)
    assert await summaries(db, [org], day) == await group_by(db, [org], day)
    # When an event for that day arrives late, after its rollup
    async with db.session() as session:  # make the earlier run older than the late margin
        await session.execute(
            text("UPDATE usage_rollup_days SET watermark = watermark - interval '1 hour'")
        )
    await insert_events(db, org, day, 1, seed=99)
    # Then the next run without a date finds the day due and includes it
    results = await run_rollup(db)
    assert day in [r.day for r in results]
    assert await summaries(db, [org], day) == await group_by(db, [org], day)


async def test_a_day_whose_events_were_removed_loses_its_summaries(db: DatabaseManager) -> None:
    org = await provisioned_org(db)
    day = a_past_day()
    await insert_events(db, org, day, 4)
    await run_rollup(db, [day])
    assert await summaries(db, [org], day)
    async with db.session() as session:
        await session.execute(
            text("DELETE FROM usage_events WHERE organization_id = :o"), {"o": org}
        )
    [result] = await run_rollup(db, [day])
    assert result.removed == 3
    assert await summaries(db, [org], day) == set()


async def test_two_runs_at_once_cannot_interleave(db: DatabaseManager) -> None:
    async with rollup_lock(db, wait=False):
        with pytest.raises(RollupBusyError, match="another rollup is running"):
            await run_rollup(db, [a_past_day()])
        waiting = asyncio.create_task(run_rollup(db, [a_past_day()], wait=True))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # it waits for the lock rather than running alongside
    assert len(await asyncio.wait_for(waiting, timeout=30)) == 1


async def test_reconcile_detects_and_repairs_a_tampered_counter(db: DatabaseManager) -> None:
    org = await provisioned_org(db)
    now = datetime.now(UTC)
    await insert_events(db, org, now.date(), 3)
    async with db.session() as session:
        await session.execute(
            text(
                "UPDATE usage_limits l SET tokens_used_period = (SELECT sum(input_tokens +"
                " output_tokens) FROM usage_events e WHERE e.organization_id = l.organization_id"
                " AND e.occurred_at >= l.period_start AND e.occurred_at < l.period_end) + 777,"
                " cost_usd_period = (SELECT sum(cost_usd) FROM usage_events e"
                " WHERE e.organization_id = l.organization_id AND e.occurred_at >= l.period_start"
                " AND e.occurred_at < l.period_end), storage_used_bytes = 5"
                " WHERE organization_id = :o"
            ),
            {"o": org},
        )
    await add_document(db, org, size_bytes=0, deleted=True)  # storage derivable: 0 live bytes
    drifted = [d for d in await find_drift(db) if d.organization_id == org]
    assert len(drifted) == 1
    assert drifted[0].tokens - drifted[0].expected_tokens == 777
    assert "+777" in drifted[0].describe()
    assert "storage 5 vs 0" in drifted[0].describe()
    await repair(db, drifted)
    assert [d for d in await find_drift(db) if d.organization_id == org] == []


def test_reconcile_command_exit_codes(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)

    async def tamper() -> None:
        from biz2bricks_core import DatabaseConfig

        manager = DatabaseManager(DatabaseConfig(database_url=database_url))
        org = await provisioned_org(manager)
        await add_document(manager, org, size_bytes=0, deleted=True)
        async with manager.session() as session:
            await session.execute(
                text("UPDATE usage_limits SET storage_used_bytes = 42 WHERE organization_id = :o"),
                {"o": org},
            )
        await manager.dispose()

    asyncio.run(tamper())
    assert rollup_main(["reconcile", "--fix"]) == 1
    assert "storage 42 vs 0" in capsys.readouterr().out
    assert rollup_main(["reconcile"]) == 0
    assert "no drift" in capsys.readouterr().out


def test_run_command_with_a_date_range(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    day = a_past_day()
    assert rollup_main(["run", "--from", str(day), "--to", str(day + timedelta(days=2))]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["day"] for d in out["days"]] == [str(day + timedelta(days=n)) for n in range(3)]
    assert rollup_main(["run", "--date", str(day), "--from", str(day)]) == 2


async def test_serve_runs_for_a_valid_token_and_refuses_anything_else(
    db: DatabaseManager,
) -> None:
    server = RollupServer(
        db, ServeSettings(host="127.0.0.1", port=0, auth="token", shared_token="s3cret-token")
    )
    await server.start()
    url = f"http://127.0.0.1:{server.port}/"

    def post(token: str | None) -> tuple[int, bytes]:
        request = urllib.request.Request(url, method="POST", data=b"")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    try:
        assert (await asyncio.to_thread(post, None))[0] == 401
        assert (await asyncio.to_thread(post, "wrong"))[0] == 401
        status, body = await asyncio.to_thread(post, "s3cret-token")
    finally:
        await server.close()
    assert status == 200
    answer = json.loads(body)
    assert "days" in answer
    assert isinstance(answer["holds_pruned"], int)  # the trigger also prunes ended holds


def test_serve_refuses_to_start_without_its_secret() -> None:
    from biz2bricks_core import ConfigurationError

    with pytest.raises(ConfigurationError, match="ROLLUP_SHARED_TOKEN"):
        ServeSettings(auth="token").check()
    with pytest.raises(ConfigurationError, match="ROLLUP_OIDC_AUDIENCE"):
        ServeSettings(auth="oidc").check()


async def test_reconcile_fix_leaves_reservations_of_an_organization_without_documents_alone(
    db: DatabaseManager,
) -> None:
    # Given an organization that reserves storage but keeps its documents elsewhere
    org = await provisioned_org(db)
    assert (await UsageService(db).reserve_storage(org, 4096)).allowed
    # When reconcile runs and repairs
    drifted = [d for d in await find_drift(db) if d.organization_id == org]
    await repair(db, await find_drift(db))
    # Then its storage is not drift, is reported as reserved, and is still reserved
    assert drifted == []
    assert ReservedStorage(org, 4096) in await reserved_only(db)
    assert (await UsageService(db).get_usage(org)).storage_used_bytes == 4096


async def test_reconcile_judges_storage_once_the_organization_has_documents(
    db: DatabaseManager,
) -> None:
    # Given an organization whose one live document is 100 bytes but 4096 are reserved
    org = await provisioned_org(db)
    await UsageService(db).reserve_storage(org, 4096)
    await add_document(db, org, size_bytes=100)
    # When reconcile repairs
    await repair(db, [d for d in await find_drift(db) if d.organization_id == org])
    # Then storage equals the live documents
    assert (await UsageService(db).get_usage(org)).storage_used_bytes == 100


async def add_document(
    db: DatabaseManager, org: uuid.UUID, *, size_bytes: int, deleted: bool = False
) -> None:
    async with db.session() as session:
        session.add(
            DocumentModel(
                organization_id=org,
                name="doc.pdf",
                size_bytes=size_bytes,
                deleted_at=datetime.now(UTC) if deleted else None,
            )
        )
