"""The wire format v1 contract: every rule, valid and invalid, with reasons naming the field."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from biz2bricks_core import InvalidEventError, UsageEvent, decode_event, encode_event
from biz2bricks_core.events import (
    MAX_BODY_BYTES,
    MAX_METADATA_DEPTH,
    storable_text,
    validate_event,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
ATTRS = {"event_type": "llm.tokens", "schema_version": "1"}


def body(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "organization_id": str(uuid.uuid4()),
        "occurred_at": "2026-11-24T11:59:00+00:00",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 200,
    }
    fields.update(overrides)
    return fields


def decode(fields: dict[str, Any], attrs: dict[str, str] | None = None) -> UsageEvent:
    return decode_event(json.dumps(fields).encode(), attrs if attrs is not None else ATTRS, now=NOW)


def test_a_minimal_valid_event_decodes_with_defaults() -> None:
    event = decode(body())
    assert event.cache_read_tokens == 0
    assert event.cache_write_tokens == 0
    assert event.total_tokens == 1200
    assert event.occurred_at.tzinfo is not None


def test_encode_then_decode_round_trips_every_field() -> None:
    event = validate_event(
        body(
            user_id=str(uuid.uuid4()),
            cache_read_tokens=300,
            cache_write_tokens=100,
            operation="summarize",
            request_id="req-1",
            metadata={"doc": "a.pdf"},
        ),
        now=NOW,
    )
    data, attributes = encode_event(event)
    assert attributes == {**ATTRS, "organization_id": str(event.organization_id)}
    assert decode_event(data, attributes, now=NOW) == event


def test_offsets_are_normalised_to_utc() -> None:
    event = decode(body(occurred_at="2026-11-24T13:30:00+02:00"))
    assert event.occurred_at == datetime(2026, 11, 24, 11, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"output_tokens": -5}, "output_tokens"),
        ({"cache_read_tokens": -1}, "cache_read_tokens"),
        ({"input_tokens": "100"}, "input_tokens"),
        ({"input_tokens": 1.5}, "input_tokens"),
        ({"input_tokens": True}, "input_tokens"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"organization_id": None}, "organization_id"),
        ({"user_id": "x"}, "user_id"),
        ({"occurred_at": "2026-11-24T11:59:00"}, "occurred_at"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"provider": ""}, "provider"),
        ({"model": "m" * 101}, "model"),
        ({"surprise": 1}, "surprise"),
        ({"metadata": {"blob": "x" * 9000}}, "metadata"),
        ({"operation": "o" * 201}, "operation"),
    ],
)
def test_a_rule_violation_is_rejected_with_the_field_named(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidEventError) as caught:
        decode(body(**overrides))
    assert field in caught.value.reason


def test_missing_required_fields_are_named() -> None:
    fields = body()
    del fields["model"]
    with pytest.raises(InvalidEventError, match="model"):
        decode(fields)


def test_cache_tokens_above_input_tokens_are_rejected() -> None:
    with pytest.raises(InvalidEventError, match="exceed input_tokens"):
        decode(body(input_tokens=100, cache_read_tokens=80, cache_write_tokens=30))


def test_cache_tokens_equal_to_input_tokens_are_accepted() -> None:
    assert decode(body(input_tokens=100, cache_read_tokens=70, cache_write_tokens=30))


def test_one_hour_cache_writes_above_cache_writes_are_rejected() -> None:
    with pytest.raises(InvalidEventError, match="cache_write_1h_tokens"):
        decode(body(input_tokens=100, cache_write_tokens=30, cache_write_1h_tokens=31))


def test_one_hour_cache_writes_within_cache_writes_are_accepted() -> None:
    event = decode(body(input_tokens=100, cache_write_tokens=30, cache_write_1h_tokens=30))
    assert event.cache_write_1h_tokens == 30


def test_a_body_without_one_hour_writes_leaves_the_field_out() -> None:
    # Consumers deployed before the field existed refuse unknown fields: 0 is not sent.
    plain = validate_event(body(), now=NOW)
    assert b"cache_write_1h_tokens" not in encode_event(plain)[0]
    with_1h = validate_event(body(cache_write_tokens=10, cache_write_1h_tokens=4), now=NOW)
    assert decode_event(*encode_event(with_1h), now=NOW).cache_write_1h_tokens == 4


def test_a_timestamp_beyond_the_allowed_skew_is_rejected() -> None:
    future = (NOW + timedelta(minutes=10)).isoformat()
    with pytest.raises(InvalidEventError, match=r"occurred_at: .*in the future"):
        decode(body(occurred_at=future))


def test_a_timestamp_within_the_allowed_skew_is_accepted() -> None:
    assert decode(body(occurred_at=(NOW + timedelta(minutes=2)).isoformat()))


def test_an_oversized_body_is_rejected_before_parsing() -> None:
    data = b"{" + b" " * MAX_BODY_BYTES + b"}"
    with pytest.raises(InvalidEventError, match=r"body: .* over the 65536 byte limit"):
        decode_event(data, ATTRS, now=NOW)


@pytest.mark.parametrize("data", [b"not json", b"[]", b"", b"\xff\xfe"])
def test_bodies_that_are_not_a_json_object_are_rejected(data: bytes) -> None:
    with pytest.raises(InvalidEventError):
        decode_event(data, ATTRS, now=NOW)


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"event_type": "llm.tokens", "schema_version": "2"}, "schema_version"),
        ({"event_type": "llm.tokens"}, "schema_version"),
        ({"event_type": "storage.bytes", "schema_version": "1"}, "event_type"),
    ],
)
def test_unknown_attributes_are_rejected(attrs: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidEventError, match=match):
        decode(body(), attrs)


def test_organization_attribute_must_match_the_body() -> None:
    with pytest.raises(InvalidEventError, match="organization_id: attribute differs"):
        decode(body(), {**ATTRS, "organization_id": str(uuid.uuid4())})


def test_importing_the_contract_does_not_import_sqlalchemy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, biz2bricks_core.events, biz2bricks_core; "
        "bad = [m for m in ('sqlalchemy', 'asyncpg') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("field", ["provider", "model", "operation", "request_id"])
def test_a_nul_character_in_a_text_field_is_rejected_with_the_field_named(field: str) -> None:
    # PostgreSQL text cannot hold U+0000: such an event would fail its whole batch.
    with pytest.raises(InvalidEventError, match=rf"^{field}: contains a NUL character"):
        decode(body(**{field: "gpt-4o\u0000x"}))


@pytest.mark.parametrize(
    "metadata",
    [
        {"note": "a\u0000b"},
        {"a\u0000b": 1},
        {"deep": [{"x": ["ok", "still\u0000bad"]}]},
    ],
    ids=["value", "key", "nested value"],
)
def test_a_nul_character_anywhere_in_metadata_is_rejected(metadata: dict[str, Any]) -> None:
    with pytest.raises(InvalidEventError, match=r"^metadata: .*NUL character"):
        decode(body(metadata=metadata))


def test_the_producer_path_rejects_nul_characters_too() -> None:
    fields = body(model="gpt\u0000", occurred_at=NOW - timedelta(minutes=1))
    with pytest.raises(InvalidEventError, match=r"^model: contains a NUL"):
        validate_event(fields, now=NOW)


def test_metadata_nested_deeper_than_the_limit_is_rejected() -> None:
    nested: Any = "leaf"
    for _ in range(MAX_METADATA_DEPTH):
        nested = [nested]
    decode(body(metadata={"x": nested[0]}))  # exactly at the limit: accepted
    with pytest.raises(InvalidEventError, match=r"^metadata: nested deeper than"):
        decode(body(metadata={"x": nested}))


def test_a_body_nested_a_thousand_levels_deep_is_rejected_not_a_crash() -> None:
    with pytest.raises(InvalidEventError, match=r"^body: "):
        decode_event(b"[" * 1000 + b"]" * 1000, ATTRS, now=NOW)


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(InvalidEventError, match=r"^body: "):
        decode_event(b'{"model": "\xff\xfe"}', ATTRS, now=NOW)


def test_a_reason_is_always_storable_even_when_the_input_names_a_nul_field() -> None:
    # The unknown field's name (with its NUL) ends up in the reason: it must be escaped.
    with pytest.raises(InvalidEventError) as caught:
        decode(body(**{"bad\u0000field": 1}))
    assert "\x00" not in caught.value.reason
    assert "bad\\u0000field" in caught.value.reason


def test_storable_text_escapes_nul_and_unencodable_characters_visibly() -> None:
    assert storable_text("a\x00b") == "a\\u0000b"
    assert storable_text("ok") == "ok"
    lone = storable_text("x\ud800y")
    lone.encode()  # no UnicodeEncodeError
    assert lone.startswith("x\\")
    assert lone.endswith("y")


@pytest.mark.parametrize(
    "occurred_at",
    ["0001-01-01T00:00:00+14:00", "1970-01-01T00:00:00+00:00", "1999-12-31T23:59:59+00:00"],
    ids=["before year 1 in UTC", "epoch", "last second before the floor"],
)
def test_an_occurred_at_before_the_earliest_plausible_time_is_rejected(occurred_at: str) -> None:
    # A UTC instant before year 1 is stored by PostgreSQL but cannot be read back into Python
    # (OverflowError), so its redelivery crashed every batch it was in.
    with pytest.raises(InvalidEventError, match=r"^occurred_at: .* before 2000-01-01"):
        decode(body(occurred_at=occurred_at))


def test_an_occurred_at_at_the_earliest_plausible_time_is_accepted() -> None:
    decode(body(occurred_at="2000-01-01T00:00:00+00:00"))


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"NaN", b"Infinity"])
def test_a_non_finite_number_in_metadata_is_rejected_not_stored_as_null(number: bytes) -> None:
    # jsonb cannot hold it: it used to be stored as null, silently changing the event.
    data = json.dumps(body(metadata={"x": "PLACEHOLDER"})).encode()
    data = data.replace(b'"PLACEHOLDER"', number)
    with pytest.raises(InvalidEventError, match=r"^metadata: .*non-finite number"):
        decode_event(data, ATTRS, now=NOW)


def test_reservation_id_is_an_optional_uuid() -> None:
    hold = uuid.uuid4()
    event = decode(body(reservation_id=str(hold)))
    assert event.reservation_id == hold
    assert decode(body()).reservation_id is None
    data, _ = encode_event(decode(body()))
    assert b"reservation_id" not in data  # absent unless set: older consumers still accept it
    with pytest.raises(InvalidEventError, match="reservation_id"):
        decode(body(reservation_id="hold-1"))
