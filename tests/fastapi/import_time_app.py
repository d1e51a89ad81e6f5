"""A FastAPI app written the careless way: the producer is made at import and never closed.

Run by the server tests under gunicorn --preload (made before fork) and uvicorn.
"""

from __future__ import annotations

import os
import uuid

from fastapi import FastAPI

from biz2bricks_producer import ProducerSettings, UsageProducer

producer = UsageProducer(ProducerSettings())
app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.post("/calls/{organization_id}")
async def call(organization_id: uuid.UUID) -> dict[str, str | int]:
    event_id = producer.record_tokens(
        organization_id=organization_id,
        provider="openai",
        model="gpt-4o",
        input_tokens=120,
        output_tokens=30,
    )
    return {"event_id": str(event_id), "pid": os.getpid()}
