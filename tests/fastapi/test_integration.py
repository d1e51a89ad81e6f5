"""biz2bricks_fastapi in process: lifespan, providers and the HTTP answer of each error."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from biz2bricks_core import DatabaseConfig, DatabaseManager, UsageServiceSettings
from biz2bricks_devtools.localservices import find_free_port
from biz2bricks_fastapi import (
    DatabaseDep,
    ProducerDep,
    SessionDep,
    UsageDep,
    get_usage_resources,
    install_error_handlers,
    require_allowed,
    usage_lifespan,
)
from biz2bricks_producer import ProducerSettings
from tests.conftest import PubSubNames
from tests.factories import provisioned_org
from tests.producer.test_producer import pull_all

NEAR_LIMIT = text(
    "UPDATE usage_limits SET tokens_used_period = token_limit - 4 WHERE organization_id = :o"
)


def make_app(**lifespan_options: Any) -> FastAPI:
    app = FastAPI(lifespan=usage_lifespan(**lifespan_options))
    install_error_handlers(app)

    @app.post("/calls/{organization_id}")
    async def call(organization_id: str, usage: UsageDep) -> dict[str, bool]:
        require_allowed(await usage.check_token_limit(organization_id, estimated_tokens=10))
        return {"allowed": True}

    @app.post("/holds/{organization_id}")
    async def hold(organization_id: str, usage: UsageDep) -> dict[str, bool]:
        require_allowed(await usage.reserve_tokens(organization_id, 10))
        return {"held": True}

    @app.post("/uploads/{organization_id}")
    async def upload(organization_id: str, size_bytes: int, usage: UsageDep) -> dict[str, int]:
        decision = require_allowed(await usage.reserve_storage(organization_id, size_bytes))
        return {"used": decision.used}

    @app.get("/ready")
    async def ready(db: DatabaseDep) -> dict[str, bool]:
        await db.check()
        return {"ready": True}

    @app.get("/one")
    async def one(session: SessionDep) -> dict[str, int]:
        return {"one": (await session.execute(text("SELECT 1"))).scalar_one()}

    @app.post("/record/{organization_id}")
    async def record(organization_id: uuid.UUID, producer: ProducerDep) -> dict[str, str]:
        event_id = producer.record_tokens(
            organization_id=organization_id,
            provider="openai",
            model="gpt-4o",
            input_tokens=5,
            output_tokens=5,
        )
        return {"event_id": str(event_id)}

    return app


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan around an in-process client, as a server runs them."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


def dead_database() -> DatabaseConfig:
    return DatabaseConfig(
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{find_free_port()}/none",
        db_pool_timeout_s=2,
    )


async def test_unknown_organization_is_404_and_a_malformed_id_422(database_url: str) -> None:
    async with running(make_app(producer=False)) as client:
        unknown = await client.post(f"/calls/{uuid.uuid4()}")
        malformed = await client.post("/calls/not-a-uuid")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_organization"
    assert malformed.status_code == 422
    assert malformed.json()["error"] == "invalid_argument"


async def test_a_denied_token_check_is_429_with_the_remaining_allowance_and_period_end(
    db: DatabaseManager,
) -> None:
    org = await provisioned_org(db, plan="free")
    async with db.session() as session:
        await session.execute(NEAR_LIMIT, {"o": org})
    async with running(make_app(producer=False)) as client:
        response = await client.post(f"/calls/{org}")
    assert response.status_code == 429
    body = response.json()
    assert (body["error"], body["remaining"]) == ("token_limit_exceeded", 4)
    assert body["period_end"] is not None
    assert int(response.headers["Retry-After"]) > 0


async def test_a_denied_hold_is_429_with_the_period_end_and_retry_after(
    db: DatabaseManager,
) -> None:
    # Given an organization 4 tokens under its limit
    org = await provisioned_org(db, plan="free")
    async with db.session() as session:
        await session.execute(NEAR_LIMIT, {"o": org})
        period_end = (
            await session.execute(
                text("SELECT period_end FROM usage_limits WHERE organization_id = :o"), {"o": org}
            )
        ).scalar_one()
    # When a hold of 10 tokens is asked for through require_allowed
    async with running(make_app(producer=False)) as client:
        response = await client.post(f"/holds/{org}")
    # Then 429 names the period's end and says when to retry, as a refused check does
    assert response.status_code == 429, response.text
    body = response.json()
    assert (body["error"], body["remaining"]) == ("token_limit_exceeded", 4)
    assert body["period_end"] == period_end.isoformat()
    assert int(response.headers["Retry-After"]) > 0


async def test_a_denied_storage_reservation_is_413(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    async with running(make_app(producer=False)) as client:
        allowed = await client.post(f"/uploads/{org}", params={"size_bytes": 1000})
        denied = await client.post(f"/uploads/{org}", params={"size_bytes": 10**15})
    assert (allowed.status_code, allowed.json()) == (200, {"used": 1000})
    assert denied.status_code == 413
    assert denied.json()["error"] == "storage_limit_exceeded"


async def test_database_down_is_503_never_413_or_429() -> None:
    app = make_app(
        producer=False,
        database=dead_database(),
        service=UsageServiceSettings(token_check_fail_open=False, storage_fail_open=False),
    )
    async with running(app) as client:  # starts although the database does not answer
        org = uuid.uuid4()
        token = await client.post(f"/calls/{org}")
        storage = await client.post(f"/uploads/{org}", params={"size_bytes": 1})
        ready = await client.get("/ready")
    assert [r.status_code for r in (token, storage, ready)] == [503, 503, 503]
    assert token.json()["error"] == "database_unavailable_fail_closed"
    assert ready.json()["error"] == "database_unavailable"


async def test_the_lifespan_warms_the_pool_and_serves_sessions(database_url: str) -> None:
    app = make_app(producer=False, warm_connections=3)
    async with running(app) as client:
        pool = get_usage_resources_of(app).db.engine.pool
        warmed = pool.checkedin()  # type: ignore[attr-defined]
        one = await client.get("/one")
    assert warmed == 3
    assert one.json() == {"one": 1}


def get_usage_resources_of(app: FastAPI) -> Any:
    class _Request:  # what get_usage_resources reads
        def __init__(self) -> None:
            self.app = app

    return get_usage_resources(_Request())  # type: ignore[arg-type]


async def test_shutdown_closes_the_producer_and_what_it_held_is_published(
    database_url: str, pubsub_names: PubSubNames, tmp_path: Path
) -> None:
    settings = ProducerSettings(
        project_id=pubsub_names.project_id,
        topic=pubsub_names.topic,
        spool_dir=tmp_path,
        batch_max_latency_ms=600_000,  # only the close at shutdown publishes
    )
    app = make_app(producer=settings)
    async with running(app) as client:
        producer = get_usage_resources_of(app).producer
        ids = [(await client.post(f"/record/{uuid.uuid4()}")).json()["event_id"] for _ in range(20)]
    assert producer.stats()["published"] == 20
    messages = pull_all(pubsub_names.subscription_path, 20)
    assert sorted(json.loads(d)["event_id"] for d, _ in messages) == sorted(ids)
