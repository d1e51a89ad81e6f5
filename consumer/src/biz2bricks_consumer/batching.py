"""Turning pulled messages into a batch to write: decode, validate, dedupe. Pure, no I/O."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

from biz2bricks_core.errors import InvalidEventError
from biz2bricks_core.events import MAX_BODY_BYTES, UsageEvent, decode_event, storable_text

CONFLICTING_DUPLICATE = "conflicting_duplicate"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """What the worker needs of one pulled Pub/Sub message."""

    ack_id: str
    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    publish_time_s: float | None = None  # seconds since the epoch, as Pub/Sub stamped it
    delivery_attempt: int | None = None

    @property
    def publish_time(self) -> datetime | None:
        """When Pub/Sub accepted the message."""
        if self.publish_time_s is None:
            return None
        return datetime.fromtimestamp(self.publish_time_s, UTC)


def claimed_organization(message: InboundMessage) -> uuid.UUID | None:
    """The organization a message names (attribute first, else body), if valid; never raises.

    The body may be anything a client sent: invalid UTF-8, JSON nested thousands deep
    (RecursionError), a non-object, a huge string.
    """
    value: object = message.attributes.get("organization_id")
    if value is None and len(message.data) <= MAX_BODY_BYTES:
        try:
            body = json.loads(message.data)
        except (ValueError, RecursionError):
            return None
        value = body.get("organization_id") if isinstance(body, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def storable_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """A message's attributes as jsonb can hold them (no NUL; see ``storable_text``)."""
    return {storable_text(k): storable_text(v) for k, v in attributes.items()}


@dataclass(frozen=True, slots=True)
class Reject:
    """A message that cannot become an event, with why. Building one never raises.

    The reason is made storable here, and the claimed organization is read once, at
    construction, so writing the reject cannot fail on either.
    """

    message: InboundMessage
    reason_code: str
    reason: str
    organization_id: uuid.UUID | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", storable_text(self.reason))
        object.__setattr__(self, "organization_id", claimed_organization(self.message))


@dataclass
class Batch:
    """Valid events (first copy of each event_id), rejects, and silent in-batch duplicates."""

    events: list[UsageEvent] = field(default_factory=list)
    sources: list[InboundMessage] = field(default_factory=list)  # the message of each event
    rejects: list[Reject] = field(default_factory=list)
    duplicates: list[InboundMessage] = field(default_factory=list)  # identical repeats
    oldest_publish_time_s: float | None = None

    @property
    def messages(self) -> list[InboundMessage]:
        """Every message of this batch: what is acked once it is committed, or released."""
        return [*self.sources, *(r.message for r in self.rejects), *self.duplicates]

    @property
    def duplicates_in_batch(self) -> int:
        """Identical repeats of an event earlier in the batch."""
        return len(self.duplicates)

    @property
    def rows(self) -> int:
        """Rows this batch writes (events and rejects): what isolation bisects."""
        return len(self.events) + len(self.rejects)

    def __len__(self) -> int:
        return len(self.sources) + len(self.rejects) + len(self.duplicates)

    def halves(self) -> tuple[Batch, Batch]:
        """Two batches with half the rows each (duplicates ride with the first); rows >= 2."""
        if len(self.events) >= 2:
            mid = len(self.events) // 2
            first = Batch(self.events[:mid], self.sources[:mid], [], self.duplicates)
            second = Batch(self.events[mid:], self.sources[mid:], self.rejects, [])
        elif self.events:
            first = Batch(self.events, self.sources, [], self.duplicates)
            second = Batch(rejects=self.rejects)
        else:
            mid = len(self.rejects) // 2
            first = Batch(rejects=self.rejects[:mid], duplicates=self.duplicates)
            second = Batch(rejects=self.rejects[mid:])
        first.oldest_publish_time_s = second.oldest_publish_time_s = self.oldest_publish_time_s
        return first, second

    def sources_of(self, events: Iterable[UsageEvent]) -> dict[uuid.UUID, InboundMessage]:
        """The message each of ``events`` (events of this batch) came from, by event_id."""
        wanted = {e.event_id for e in events}
        return {
            e.event_id: m
            for e, m in zip(self.events, self.sources, strict=True)
            if e.event_id in wanted
        }

    def split_off(
        self, organizations: Collection[uuid.UUID]
    ) -> tuple[list[UsageEvent], list[tuple[UsageEvent, InboundMessage]]]:
        """The events of other organizations, and those of ``organizations`` with their message."""
        keep: list[UsageEvent] = []
        split: list[tuple[UsageEvent, InboundMessage]] = []
        for event, message in zip(self.events, self.sources, strict=True):
            if event.organization_id in organizations:
                split.append((event, message))
            else:
                keep.append(event)
        return keep, split

    def refused(self, reason_code: str, reason: str) -> Batch:
        """This batch with every event turned into a reject (the database refused it)."""
        rejects = [Reject(m, reason_code, reason) for m in self.sources]
        return Batch(
            rejects=[*self.rejects, *rejects],
            duplicates=self.duplicates,
            oldest_publish_time_s=self.oldest_publish_time_s,
        )


def reason_code(reason: str) -> str:
    """A short, bounded label for metrics, from a reason's leading field name."""
    head = reason.split(":", 1)[0].split(".", 1)[0].strip()
    return head if head.isidentifier() and len(head) <= 32 else "invalid"


# Columns added after events were first stored: NULL in an older row means "not recorded",
# not "absent", so a redelivery of such an event that carries one is no conflict
# (usage_events.reservation_id, migration 0006). A hold named only by the copy settles
# nothing, as for any event that is not new.
RECORDED_SINCE_STORED: Final = frozenset({"reservation_id"})


def conflict_reason(stored: Mapping[str, object], received: UsageEvent) -> str | None:
    """Why ``received`` conflicts with the stored version of its event_id, or None if equal.

    Compares the fields both sides have; names each differing field with both values.
    """
    differences = []
    for name in UsageEvent.model_fields:
        if name not in stored:
            continue
        before, after = stored[name], getattr(received, name)
        if before is None and name in RECORDED_SINCE_STORED:
            continue
        same = json_value(before) == json_value(after) if name == "metadata" else before == after
        if not same:
            differences.append(f"{name}: stored {_short(before)}, received {_short(after)}")
    # The price context is stored as one variant string (processing, service_tier, ...).
    stored_variant = stored.get("price_variant")
    if stored_variant is not None and stored_variant != received.price_variant:
        differences.append(
            f"price_variant: stored {stored_variant!r}, received {received.price_variant!r}"
        )
    if not differences:
        return None
    return f"event_id: {received.event_id} already stored with other content; " + "; ".join(
        differences
    )


def json_value(value: object) -> object:
    """A JSON value as jsonb compares it: numbers as exact decimals, booleans apart from them.

    jsonb keeps numbers as numeric: 1e23 comes back as the integer 10**23, -0.0 as 0.0, while
    in Python ``True == 1``. Compared raw, an identical redelivery would look like a conflict.
    """
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


def _short(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def build_batch(messages: Iterable[InboundMessage], *, now: datetime | None = None) -> Batch:
    """Decode every message; invalid ones become rejects, repeated event_ids are dropped.

    A repeat with the same content is a silent duplicate; one with other content is kept as
    a ``conflicting_duplicate`` reject.
    """
    batch = Batch()
    seen: dict[uuid.UUID, UsageEvent] = {}
    now = now if now is not None else datetime.now(UTC)  # once per batch, not per message
    oldest: float | None = None
    for message in messages:
        published = message.publish_time_s
        if published is not None and (oldest is None or published < oldest):
            oldest = published
        try:
            event = decode_event(message.data, message.attributes, now=now)
        except InvalidEventError as error:
            batch.rejects.append(Reject(message, reason_code(error.reason), error.reason))
            continue
        first = seen.get(event.event_id)
        if first is not None:
            conflict = conflict_reason(dict(first), event)
            if conflict is None:
                batch.duplicates.append(message)
            else:
                batch.rejects.append(Reject(message, CONFLICTING_DUPLICATE, conflict))
            continue
        seen[event.event_id] = event
        batch.events.append(event)
        batch.sources.append(message)
    batch.oldest_publish_time_s = oldest
    return batch
