"""Building a batch from hostile messages: never raises, rejects are storable, duplicates sorted."""

from __future__ import annotations

import uuid

import pytest

from biz2bricks_consumer.batching import (
    CONFLICTING_DUPLICATE,
    Reject,
    build_batch,
    storable_attributes,
)
from tests.factories import make_event, message_for, raw_message

ATTRS = {"event_type": "llm.tokens", "schema_version": "1"}
ORG = uuid.uuid4()


@pytest.mark.parametrize(
    ("data", "attributes"),
    [
        (b"[" * 1000 + b"]" * 1000, ATTRS),  # RecursionError in json.loads before the fix
        (b"[" * 100_000, ATTRS),
        (b"\xff\xfe\x00garbage", ATTRS),
        (b"x" * 2_000_000, ATTRS),
        (b'{"organization_id": {"nested": true}}', ATTRS),
        (b'{"organization_id": "not-a-uuid"}', {**ATTRS, "organization_id": "a\x00b"}),
    ],
    ids=["deep-array", "unclosed-deep", "invalid-utf8", "huge", "org-object", "nul-org-attr"],
)
def test_hostile_messages_become_rejects_without_raising(
    data: bytes, attributes: dict[str, str]
) -> None:
    batch = build_batch([raw_message(data, attributes)])
    assert len(batch.rejects) == 1
    reject = batch.rejects[0]
    assert reject.organization_id is None
    assert "\x00" not in reject.reason


def test_a_reject_reads_the_claimed_organization_from_the_body_once() -> None:
    message = raw_message(f'{{"organization_id": "{ORG}", "bad": 1}}'.encode(), ATTRS)
    assert Reject(message, "invalid", "why").organization_id == ORG


def test_a_reject_reason_with_nul_is_made_storable() -> None:
    reject = Reject(raw_message(b"x"), "database_refused", "value a\x00b refused")
    assert reject.reason == "value a\\u0000b refused"


def test_attributes_with_nul_are_stored_escaped() -> None:
    assert storable_attributes({"k\x00": "v\x00v"}) == {"k\\u0000": "v\\u0000v"}


def test_an_identical_repeat_in_a_batch_is_a_silent_duplicate() -> None:
    event = make_event(ORG)
    batch = build_batch([message_for(event), message_for(event)])
    assert (len(batch.events), batch.duplicates_in_batch, len(batch.rejects)) == (1, 1, 0)


def test_a_repeat_with_other_content_in_a_batch_is_a_conflicting_duplicate() -> None:
    event = make_event(ORG, input_tokens=1000)
    other = event.model_copy(update={"input_tokens": 5})
    batch = build_batch([message_for(event), message_for(other)])
    assert len(batch.events) == 1
    assert batch.duplicates_in_batch == 0
    [reject] = batch.rejects
    assert reject.reason_code == CONFLICTING_DUPLICATE
    assert "input_tokens: stored 1000, received 5" in reject.reason


def test_halves_split_the_rows_and_keep_every_message() -> None:
    events = [make_event(ORG) for _ in range(5)]
    messages = [message_for(e) for e in events]
    batch = build_batch([*messages, messages[0], raw_message(b"junk", ATTRS)])
    first, second = batch.halves()
    assert first.rows + second.rows == batch.rows == 6
    assert sorted(m.ack_id for m in [*first.messages, *second.messages]) == sorted(
        m.ack_id for m in batch.messages
    )
    lone = build_batch([messages[0]]).refused("database_refused", "refused")
    assert (lone.rows, len(lone.rejects), lone.events) == (1, 1, [])
