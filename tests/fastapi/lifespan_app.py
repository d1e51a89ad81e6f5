"""A FastAPI app written the README's way: usage_lifespan, Depends providers, error handlers."""

from __future__ import annotations

import os

from fastapi import FastAPI

from biz2bricks_fastapi import (
    DatabaseDep,
    ProducerDep,
    UsageDep,
    install_error_handlers,
    require_allowed,
    usage_lifespan,
)

app = FastAPI(lifespan=usage_lifespan())
install_error_handlers(app)


@app.get("/healthz")
async def healthz() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.post("/calls/{organization_id}")
async def call(
    organization_id: str, usage: UsageDep, producer: ProducerDep
) -> dict[str, str | int]:
    require_allowed(await usage.check_token_limit(organization_id, estimated_tokens=100))
    event_id = producer.record_tokens(
        organization_id=organization_id,
        provider="openai",
        model="gpt-4o",
        input_tokens=120,
        output_tokens=30,
    )
    return {"event_id": str(event_id), "pid": os.getpid()}


@app.post("/uploads/{organization_id}")
async def upload(organization_id: str, size_bytes: int, usage: UsageDep) -> dict[str, int | None]:
    decision = require_allowed(await usage.reserve_storage(organization_id, size_bytes))
    return {"used": decision.used}


@app.get("/ready")
async def ready(db: DatabaseDep) -> dict[str, bool]:
    await db.check()  # DatabaseUnavailableError -> 503
    return {"ready": True}
