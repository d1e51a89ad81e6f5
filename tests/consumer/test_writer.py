"""The write path against real PostgreSQL: exactly once, rejects, periods, cost, concurrency."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text

from biz2bricks_consumer.batching import build_batch
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import DatabaseManager, UsageEvent, encode_event, recording
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.periods import period_bounds
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_core.recording import INPUT_COLUMNS, INSERT_AND_COUNT, event_params
from tests.factories import (
    assert_counter_derivable,
    counters,
    event_count,
    make_event,
    message_for,
    provisioned_org,
    raw_message,
)


@pytest.fixture
async def writer(db: DatabaseManager) -> BatchWriter:
    book = await load_price_book(db, ModelNames())
    return BatchWriter(db, lambda: book)


async def test_a_batch_inserts_rows_and_adds_tokens_once(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    org = await provisioned_org(db)
    events = [make_event(org, input_tokens=100 * (i + 1), output_tokens=10) for i in range(5)]
    result = await writer.write(build_batch(message_for(e) for e in events))
    assert result.inserted == 5
    assert await event_count(db, org) == 5
    assert await assert_counter_derivable(db, org) == 1500 + 50


async def test_duplicates_within_one_batch_count_once(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    org = await provisioned_org(db)
    event = make_event(org)
    result = await writer.write(build_batch([message_for(event)] * 3))
    assert (result.inserted, result.duplicates) == (1, 2)
    assert await event_count(db, org) == 1
    assert await assert_counter_derivable(db, org) == event.total_tokens


async def test_duplicates_across_batches_count_once(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    org = await provisioned_org(db)
    events = [make_event(org) for _ in range(3)]
    await writer.write(build_batch(message_for(e) for e in events))
    again = await writer.write(build_batch(message_for(e) for e in [*events, make_event(org)]))
    assert (again.inserted, again.duplicates) == (1, 3)
    assert await event_count(db, org) == 4
    assert await assert_counter_derivable(db, org) == 4 * 1100


async def test_poison_messages_become_rejects_and_valid_ones_are_written(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    org = await provisioned_org(db)
    good = [make_event(org) for _ in range(3)]
    attrs = {"event_type": "llm.tokens", "schema_version": "1"}
    poison = [
        raw_message(b"{not json", attrs),
        raw_message(b'{"event_id": "x"}', {**attrs, "schema_version": "9"}),
        raw_message(
            message_for(make_event(org, input_tokens=5)).data.replace(
                b'"input_tokens":5', b'"input_tokens":-5'
            ),
            {**attrs, "organization_id": str(org)},
        ),
        raw_message(b"x" * 70_000, attrs),
    ]
    result = await writer.write(
        build_batch(
            [
                message_for(good[0]),
                *poison[:2],
                message_for(good[1]),
                *poison[2:],
                message_for(good[2]),
            ]
        )
    )
    assert result.inserted == 3
    assert len(result.rejected) == 4
    assert await event_count(db, org) == 3
    async with db.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT message_id, reason, reason_code, raw_data, attributes"
                    " FROM usage_event_rejects"
                    " WHERE message_id = ANY(:ids) ORDER BY id"
                ),
                {"ids": [p.message_id for p in poison]},
            )
        ).all()
    by_id = {r.message_id: r for r in rows}
    assert set(by_id) == {p.message_id for p in poison}
    assert by_id[poison[0].message_id].raw_data == b"{not json"
    assert "schema_version" in by_id[poison[1].message_id].reason
    assert by_id[poison[2].message_id].reason_code == "input_tokens"
    assert "byte limit" in by_id[poison[3].message_id].reason
    assert by_id[poison[1].message_id].attributes["schema_version"] == "9"


async def test_only_stored_events_are_reported_unpriced(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    # Given an unpriced model used by a provisioned organization and by an unknown one
    known, stranger = await provisioned_org(db), uuid.uuid4()
    events = [
        make_event(known, provider="acme", model="mystery-1"),
        make_event(stranger, provider="acme", model="mystery-2"),
        make_event(known),
    ]
    # When the batch is written
    result = await writer.write(build_batch(message_for(e) for e in events))
    # Then the unknown organization's event is a reject, not an unpriced model
    assert (result.inserted, result.unpriced) == (2, 1)
    assert [(p, m) for p, m, _ in result.unpriced_models] == [("acme", "mystery-1")]
    assert [r.reason_code for r in result.rejected] == ["unknown_organization"]


async def test_events_of_an_unknown_organization_are_rejected_not_lost(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    known = await provisioned_org(db)
    stranger = uuid.uuid4()
    message = message_for(make_event(stranger))
    result = await writer.write(build_batch([message, message_for(make_event(known))]))
    assert result.inserted == 1
    assert [r.reason_code for r in result.rejected] == ["unknown_organization"]
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT organization_id, raw_data FROM usage_event_rejects"
                    " WHERE message_id = :m"
                ),
                {"m": message.message_id},
            )
        ).one()
    assert row.organization_id == stranger
    assert row.raw_data == message.data


async def test_a_late_event_from_the_previous_period_is_stored_but_not_counted(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    org = await provisioned_org(db)
    await writer.write(build_batch([message_for(make_event(org))]))
    before = await counters(db, org)
    late = make_event(org, occurred_at=before["period_start"] - timedelta(hours=2))
    result = await writer.write(build_batch([message_for(late)]))
    after = await counters(db, org)
    assert result.inserted == 1
    assert await event_count(db, org) == 2
    assert after["tokens_used_period"] == before["tokens_used_period"]
    assert after["period_start"] == before["period_start"]
    await assert_counter_derivable(db, org)


async def test_the_first_event_after_period_end_rolls_the_period_forward(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    # Given an organization whose current period ended (set back two months) with usage in it
    org = await provisioned_org(db, plan="free")
    now = datetime.now(UTC)
    old_start, old_end = period_bounds(now - timedelta(days=62))
    async with db.session() as session:
        await session.execute(
            text(
                "UPDATE usage_limits SET period_start = :s, period_end = :e,"
                " tokens_used_period = 150000, grants_consumed_period = 50000"
                " WHERE organization_id = :o"
            ),
            {"s": old_start, "e": old_end, "o": org},
        )
    # When a batch brings a late event of the old period and the first one of this period
    stale = make_event(org, occurred_at=old_start + timedelta(days=1), input_tokens=7)
    fresh = make_event(org, input_tokens=300, output_tokens=20)
    await writer.write(build_batch([message_for(stale), message_for(fresh)]))
    # Then the period is the current one, holding only the fresh event's tokens
    after = await counters(db, org)
    assert (after["period_start"], after["period_end"]) == period_bounds(now)
    assert after["tokens_used_period"] == 320
    # and what grants paid for in the old period is history: the new period starts at 0
    assert after["grants_consumed_period"] == 0
    await assert_counter_derivable(db, org)


async def test_cost_uses_the_price_in_force_including_cached_tokens(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    org = await provisioned_org(db)
    event = make_event(
        org,
        provider="anthropic",
        model="claude-sonnet-4-5",
        input_tokens=1_000_000,
        cache_read_tokens=600_000,
        cache_write_tokens=100_000,
        output_tokens=100_000,
    )
    unpriced = make_event(org, provider="acme", model="mystery-1")
    await writer.write(build_batch([message_for(event), message_for(unpriced)]))
    async with db.engine.connect() as conn:
        rows = {
            r.model: r
            for r in (
                await conn.execute(
                    text(
                        "SELECT e.model, e.cost_usd, e.pricing_id, e.unpriced_reason,"
                        " p.input_per_mtok,"
                        " p.cache_read_per_mtok,"
                        " p.cache_write_per_mtok, p.output_per_mtok FROM usage_events e"
                        " LEFT JOIN model_pricing p ON p.id = e.pricing_id"
                        " WHERE e.organization_id = :o"
                    ),
                    {"o": org},
                )
            ).all()
        }
    p = rows["claude-sonnet-4-5"]
    expected = (
        300_000 * p.input_per_mtok
        + 600_000 * p.cache_read_per_mtok
        + 100_000 * p.cache_write_per_mtok
        + 100_000 * p.output_per_mtok
    ) / 1_000_000
    assert p.cost_usd == expected
    assert p.cost_usd > 0
    # An unknown provider's call is stored with no cost, never $0, and says why.
    mystery = rows["mystery-1"]
    assert (mystery.cost_usd, mystery.pricing_id) == (None, None)
    assert mystery.unpriced_reason == "unknown_provider"
    await assert_counter_derivable(db, org)
    assert (await counters(db, org))["unpriced_events_period"] == 1


async def test_concurrent_writers_on_shared_organizations_neither_deadlock_nor_lose(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    # Given ten organizations and batches that touch them in different orders
    orgs = [await provisioned_org(db) for _ in range(10)]
    batches = []
    for i in range(16):
        order = orgs if i % 2 else list(reversed(orgs))
        batches.append(build_batch(message_for(make_event(o, input_tokens=i + 1)) for o in order))
    # When they are written concurrently on separate connections
    results = await asyncio.gather(*(writer.write(b) for b in batches))
    # Then every event counted exactly once
    assert sum(r.inserted for r in results) == 160
    for org in orgs:
        assert await assert_counter_derivable(db, org) == sum(i + 1 + 100 for i in range(16))


async def test_every_field_of_an_event_is_stored(db: DatabaseManager, writer: BatchWriter) -> None:
    org = await provisioned_org(db)
    user = uuid.uuid4()
    event = make_event(
        org,
        user_id=user,
        operation="summarize",
        request_id="req-42",
        metadata={"document": "a.pdf", "pages": 3},
        cache_write_tokens=10,
    )
    await writer.write(build_batch([message_for(event)]))
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT * FROM usage_events WHERE event_id = :e"), {"e": event.event_id}
            )
        ).one()
    assert row.user_id == user
    assert (row.operation, row.request_id) == ("summarize", "req-42")
    assert row.metadata == {"document": "a.pdf", "pages": 3}
    assert row.occurred_at == event.occurred_at
    assert (row.input_tokens, row.output_tokens, row.cache_write_tokens) == (1000, 100, 10)
    assert row.pricing_id is not None


async def reject_rows(db: DatabaseManager, reason_code: str, org: uuid.UUID) -> list[Any]:
    async with db.engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT * FROM usage_event_rejects WHERE reason_code = :c"
                " AND (organization_id = :o OR reason LIKE '%' || :s || '%')"
            ),
            {"c": reason_code, "o": org, "s": str(org)},
        )
        return list(result)


async def test_a_stored_event_id_with_other_content_is_kept_as_a_conflicting_duplicate(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    # Given a stored event
    org, other_org = await provisioned_org(db), await provisioned_org(db)
    stored = make_event(org, input_tokens=1000)
    await writer.write(build_batch([message_for(stored)]))
    # When a message reuses its event_id with other tokens and another organization
    changed = stored.model_copy(update={"input_tokens": 7, "organization_id": other_org})
    message = message_for(changed)
    result = await writer.write(build_batch([message]))
    # Then it is one reject naming both versions, the stored row and counters unchanged
    assert (result.inserted, result.duplicates, result.conflicts) == (0, 0, 1)
    [row] = await reject_rows(db, "conflicting_duplicate", other_org)
    assert row.raw_data == message.data
    assert row.organization_id == other_org
    assert str(stored.event_id) in row.reason
    assert "input_tokens: stored 1000, received 7" in row.reason
    assert f"organization_id: stored UUID('{org}'), received UUID('{other_org}')" in row.reason
    assert await event_count(db, org) == 1
    assert await event_count(db, other_org) == 0
    assert await assert_counter_derivable(db, org) == 1100
    assert await assert_counter_derivable(db, other_org) == 0


async def test_an_identical_redelivery_is_a_silent_duplicate(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    org = await provisioned_org(db)
    event = make_event(org, metadata={"k": [1, 2.5, {"n": None}]}, operation="summarise")
    await writer.write(build_batch([message_for(event)]))
    result = await writer.write(build_batch([message_for(event), message_for(make_event(org))]))
    assert (result.inserted, result.duplicates, result.conflicts) == (1, 1, 0)
    assert await reject_rows(db, "conflicting_duplicate", org) == []


async def test_an_identical_redelivery_with_float_metadata_is_a_silent_duplicate(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    # Given an event whose metadata holds floats that jsonb keeps as exact decimals
    # (1e23 comes back as the integer 10**23, -0.0 as 0.0)
    org = await provisioned_org(db)
    metadata = {"big": 1e23, "huge": 1.5e300, "small": 1e-7, "neg_zero": -0.0, "ok": True}
    event = make_event(org, metadata=metadata)
    await writer.write(build_batch([message_for(event)]))
    # When the same message is delivered again
    result = await writer.write(build_batch([message_for(event)]))
    # Then it is a silent duplicate, not a conflicting one
    assert (result.inserted, result.duplicates, result.conflicts) == (0, 1, 0)
    assert await reject_rows(db, "conflicting_duplicate", org) == []


async def test_metadata_that_really_differs_in_a_number_is_still_a_conflict(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    org = await provisioned_org(db)
    stored = make_event(org, metadata={"n": 1, "flag": True})
    await writer.write(build_batch([message_for(stored)]))
    changed = stored.model_copy(update={"metadata": {"n": 1.5, "flag": True}})
    result = await writer.write(build_batch([message_for(changed)]))
    assert result.conflicts == 1
    flipped = stored.model_copy(update={"metadata": {"n": 1, "flag": 1}})
    result = await writer.write(build_batch([message_for(flipped)]))
    assert result.conflicts == 1


async def test_an_event_before_year_one_in_utc_is_rejected_and_its_redelivery_does_not_crash(
    db: DatabaseManager, writer: BatchWriter
) -> None:
    # Given an event whose occurred_at is a UTC instant PostgreSQL stores but Python cannot read
    org = await provisioned_org(db)
    data, attributes = encode_event(make_event(org))
    data = data.replace(b'"occurred_at":"', b'"occurred_at":"0001-01-01T00:00:00+14:00","x":"', 1)
    fields = json.loads(data)
    del fields["x"]
    ancient = raw_message(json.dumps(fields).encode(), attributes)
    # When it is delivered twice, next to a valid event
    await writer.write(build_batch([ancient]))
    result = await writer.write(build_batch([ancient, message_for(make_event(org))]))
    # Then the valid event is written and the poison is a reject each time, never an event
    assert result.inserted == 1
    assert [r.reason_code for r in result.rejected] == ["occurred_at"]
    assert await event_count(db, org) == 1


# the statement's input


def test_the_batch_statement_reads_every_field_of_the_event() -> None:
    # A field added to UsageEvent must reach the statement too (or be left out on purpose)
    read = [name for name, _ in INPUT_COLUMNS]
    # On purpose: the four price-context fields reach it composed as one price_variant.
    context = {"processing", "service_tier", "speed", "route"}
    fields = [f for f in UsageEvent.model_fields if f not in context]
    assert read[: len(fields)] == fields
    assert read[len(fields) :] == ["price_variant", "pricing_id", "unpriced_reason"]


async def test_uuids_of_the_driver_are_written_as_uuids_without_the_slow_path(
    db: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an event whose hold id came from a stored row (asyncpg's UUID subclass)
    async with db.driver() as conn:
        stored = await conn.fetchval("SELECT gen_random_uuid()")
    assert type(stored) is not uuid.UUID
    plain = make_event(uuid.uuid4(), reservation_id=uuid.UUID(str(stored)))
    from_row = plain.model_copy(update={"reservation_id": stored})
    book = await load_price_book(db, ModelNames())

    def slow_path(rows: object) -> bytes:
        raise AssertionError("pydantic wrote the rows: orjson refused a value")

    monkeypatch.setattr(recording._ROWS_JSON, "dump_json", slow_path)
    # Then the statement's input is the same as for the stdlib UUID, written by orjson
    assert event_params([from_row], book)[0] == event_params([plain], book)[0]


async def test_values_arrive_as_sent(db: DatabaseManager, writer: BatchWriter) -> None:
    # Given events with and without metadata, operation and request_id, text that JSON must
    # escape, and a time with another offset than UTC
    org = await provisioned_org(db)
    full = make_event(
        org,
        occurred_at=datetime.now(timezone(timedelta(hours=5, minutes=30))) - timedelta(hours=1),
        operation='sum "quoted" \\ back\\slash',
        request_id="réq_ü_☃_1",
        metadata={"feature": "chat", "n": 1.5, "nested": {"ok": True}, "none": None, "t": "€\n"},
    )
    bare = make_event(org)
    huge = make_event(org, metadata={"beyond_64_bits": 2**70})
    # When they are written (orjson writes the first batch; pydantic the one it cannot write)
    await writer.write(build_batch(message_for(e) for e in [full, bare]))
    await writer.write(build_batch([message_for(huge)]))
    # Then every value is stored as sent, and an absent one is SQL NULL (not JSON null)
    async with db.engine.connect() as conn:
        rows = {
            r.event_id: r
            for r in await conn.execute(
                text(
                    "SELECT event_id, occurred_at, operation, request_id, metadata,"
                    " metadata IS NULL AS no_md FROM usage_events WHERE organization_id = :o"
                ),
                {"o": org},
            )
        }
    stored = rows[full.event_id]
    assert stored.occurred_at == full.occurred_at
    assert (stored.operation, stored.request_id) == (full.operation, full.request_id)
    assert stored.metadata == full.metadata
    assert (rows[bare.event_id].operation, rows[bare.event_id].request_id) == (None, None)
    assert rows[bare.event_id].no_md is True
    assert rows[huge.event_id].metadata == {"beyond_64_bits": 2**70}


# plan shape


RESCANNED = ("CTE Scan", "Materialize", "Seq Scan", "Function Scan")


def _loops_over_scans(plan: dict[str, Any]) -> list[str]:
    """Nested loops whose inner side reads a relation in full (a CTE, a materialized, a
    function's or a sequentially scanned one, however wrapped: an Append of them, say) rather
    than probing an index: each costs rows x rows."""
    found = []
    children = plan.get("Plans", [])
    if plan["Node Type"] == "Nested Loop":
        inner = next(c for c in children if c.get("Parent Relationship") == "Inner")
        scans = [n for n in _nodes(inner) if n in RESCANNED]
        if scans:
            found.append(f"Nested Loop over {', '.join(scans)} (estimated {plan['Plan Rows']})")
    for child in children:
        found.extend(_loops_over_scans(child))
    return found


def _nodes(plan: dict[str, Any]) -> list[str]:
    """The node types of a plan tree, this one first."""
    return [plan["Node Type"], *(n for c in plan.get("Plans", []) for n in _nodes(c))]


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_a_full_batch_settling_holds_is_never_joined_by_rescans(
    db: DatabaseManager, plan_cache_mode: str
) -> None:
    # Given 1,000 organizations with 25 live holds each, and a batch of 1,000 events, one per
    # organization, each settling a hold: the bench's shape that, planned as 100 rows, was
    # joined by nested loops at 0.4 s a batch
    orgs = sorted(uuid.uuid4() for _ in range(1000))
    holds = [(uuid.uuid4(), org) for org in orgs for _ in range(25)]
    events = [make_event(org, reservation_id=hold) for hold, org in holds[::25]]
    book = await load_price_book(db, ModelNames())
    *params, _ = event_params(events, book)
    async with db.driver() as conn:
        rolled_back = conn.transaction()  # nothing of this test stays in the shared database
        await rolled_back.start()
        try:
            await conn.execute(
                "INSERT INTO organizations (id, name)"
                " SELECT o, 'plan test' FROM unnest($1::uuid[]) o",
                orgs,
            )
            await conn.execute(
                "INSERT INTO usage_limits (organization_id, plan, token_limit, period_start,"
                " period_end) SELECT o, 'pro', 10000000, date_trunc('month', now()),"
                " date_trunc('month', now()) + interval '1 month' FROM unnest($1::uuid[]) o",
                orgs,
            )
            await conn.execute(
                "INSERT INTO usage_token_holds (id, organization_id, tokens, expires_at)"
                " SELECT i, o, 2000, now() + interval '1 hour'"
                " FROM unnest($1::uuid[], $2::uuid[]) AS t(i, o)",
                *zip(*holds, strict=True),
            )
            # When the batch statement is planned for this batch, and as a generic plan
            plan = await explain_batch(conn, plan_cache_mode, params)
        finally:
            await rolled_back.rollback()
    # Then every join of the batch's rows hashes, merges or probes an index
    assert _loops_over_scans(plan) == []


async def explain_batch(conn: Any, plan_cache_mode: str, params: list[Any]) -> dict[str, Any]:
    """The plan of INSERT_AND_COUNT for ``params``, planned under ``plan_cache_mode``."""
    await conn.execute(f"SET LOCAL plan_cache_mode = {plan_cache_mode}")
    name = f"batch_plan_{uuid.uuid4().hex}"  # PREPARE outlives a failed transaction
    await conn.execute(f"PREPARE {name} AS {INSERT_AND_COUNT}")
    try:
        literals = await conn.fetchrow(
            "SELECT quote_literal($1::text), quote_literal($2::int[]), quote_literal($3::int)",
            *params,
        )
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}({', '.join(literals)})")
    finally:
        await conn.execute(f"DEALLOCATE {name}")
    # (pooled connections decode json: SQLAlchemy's asyncpg dialect sets them up so)
    return plan[0]["Plan"]  # type: ignore[no-any-return]
