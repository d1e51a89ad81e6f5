"""Seeded fuzzing of the real write path: whatever bytes, ids and field values a message
carries, a batch commits, and every message ends as exactly one stored event or one reject
with its reason; the counters stay derivable from the events."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from biz2bricks_consumer.batching import build_batch
from biz2bricks_consumer.partitions import PartitionGuard
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import DatabaseManager
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from tests.factories import (
    assert_counter_derivable,
    make_event,
    message_for,
    provisioned_org,
    raw_message,
)

ATTRIBUTES = {"event_type": "llm.tokens", "schema_version": "1"}
# The times a fuzzed v7 id carries: a few months only, so the session's table does not grow a
# partition per message. Past the year 9999 (a tenth of random v7 ids), before retention,
# far ahead, and now.
V7_MS = [
    (1 << 48) - 1,
    0xE677D21FDC00,  # the first millisecond of the year 10000
    int(datetime(1975, 6, 1, tzinfo=UTC).timestamp() * 1000),
    int(datetime(9000, 1, 1, tzinfo=UTC).timestamp() * 1000),
    int(datetime.now(UTC).timestamp() * 1000),
]
ODD_VALUES: list[Any] = [
    None,
    -1,
    0,
    2**63,
    2**70,
    1.5,
    "12",
    "",
    "\u0000",
    "é" * 300,
    [],
    {},
    {"a": [1, {"b": None}]},
    True,
]
FIELDS = [
    "event_id",
    "organization_id",
    "user_id",
    "occurred_at",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "operation",
    "request_id",
    "metadata",
    "processing",
    "service_tier",
    "web_search_requests",
]


def fuzzed_id(rng: random.Random) -> uuid.UUID:
    """A v7 id of one of V7_MS's times, or any 128 bits (any version and variant)."""
    if rng.random() < 0.5:
        tail = rng.getrandbits(80)
        tail = (tail & ~(0xF << 76)) | (0x7 << 76)
        tail = (tail & ~(0x3 << 62)) | (0x2 << 62)
        return uuid.UUID(int=(rng.choice(V7_MS) << 80) | tail)
    return uuid.UUID(int=rng.getrandbits(128))


def fuzzed_message(rng: random.Random, org: uuid.UUID) -> Any:
    """One message: a valid event with a fuzzed id, one with an odd field value, bytes, or a
    cut body."""
    event = make_event(
        org,
        event_id=fuzzed_id(rng),
        occurred_at=datetime.now(UTC) - timedelta(minutes=rng.randint(1, 600)),
        input_tokens=rng.randint(0, 10**6),
    )
    kind = rng.randrange(4)
    if kind == 0:
        return message_for(event)
    body = json.loads(message_for(event).data)
    if kind == 1:
        body[rng.choice(FIELDS)] = rng.choice(ODD_VALUES)
        return raw_message(json.dumps(body).encode(), ATTRIBUTES)
    if kind == 2:
        return raw_message(rng.randbytes(rng.randint(0, 300)), ATTRIBUTES)
    data = json.dumps(body).encode()
    return raw_message(data[: rng.randint(0, len(data) - 1)], ATTRIBUTES)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_fuzzed_messages_each_end_as_one_event_or_one_reject(
    db: DatabaseManager, seed: int
) -> None:
    rng = random.Random(seed)
    org = await provisioned_org(db)
    book = await load_price_book(db, ModelNames())
    writer = BatchWriter(db, lambda: book, PartitionGuard(db, 13))
    messages = [fuzzed_message(rng, org) for _ in range(240)]
    inserted = 0
    for start in range(0, len(messages), 40):
        # When each batch is written (no exception may escape: that would fail the batch)
        batch = messages[start : start + 40]
        result = await writer.write(build_batch(batch))
        assert result.inserted + result.duplicates + len(result.rejected) == len(batch)
        inserted += result.inserted
    # Then every message is one stored event or one stored reject with a reason
    ids = [m.message_id for m in messages]
    async with db.engine.connect() as conn:
        rejects = (
            await conn.execute(
                text(
                    "SELECT message_id, reason FROM usage_event_rejects"
                    " WHERE message_id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        ).all()
        stored = (
            await conn.execute(
                text("SELECT count(*) FROM usage_events WHERE organization_id = :o"), {"o": org}
            )
        ).scalar_one()
    assert len(rejects) + stored == len(messages)
    assert stored == inserted
    assert all(r.reason for r in rejects)
    assert {r.message_id for r in rejects} <= set(ids)
    await assert_counter_derivable(db, org)
