"""Turning pulled messages into a batch to write: decode, validate, dedupe. Pure, no I/O."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from biz2bricks_core.errors import InvalidEventError
from biz2bricks_core.events import UsageEvent, decode_event


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


@dataclass(frozen=True, slots=True)
class Reject:
    """A message that cannot become an event, with why."""

    message: InboundMessage
    reason_code: str
    reason: str

    @property
    def organization_id(self) -> uuid.UUID | None:
        """The organization the message claims, when it names a valid one."""
        value = self.message.attributes.get("organization_id")
        if value is None:
            try:
                value = json.loads(self.message.data).get("organization_id")
            except (ValueError, AttributeError, UnicodeDecodeError):
                return None
        try:
            return uuid.UUID(str(value))
        except ValueError:
            return None


@dataclass
class Batch:
    """Valid events (first copy of each event_id), rejects, and every ack_id to settle."""

    events: list[UsageEvent] = field(default_factory=list)
    sources: list[InboundMessage] = field(default_factory=list)  # the message of each event
    rejects: list[Reject] = field(default_factory=list)
    ack_ids: list[str] = field(default_factory=list)
    duplicates_in_batch: int = 0
    oldest_publish_time_s: float | None = None

    def __len__(self) -> int:
        return len(self.ack_ids)


def reason_code(reason: str) -> str:
    """A short, bounded label for metrics, from a reason's leading field name."""
    head = reason.split(":", 1)[0].split(".", 1)[0].strip()
    return head if head.isidentifier() and len(head) <= 32 else "invalid"


def build_batch(messages: Iterable[InboundMessage], *, now: datetime | None = None) -> Batch:
    """Decode every message; invalid ones become rejects, repeated event_ids are dropped."""
    batch = Batch()
    seen: set[uuid.UUID] = set()
    now = now if now is not None else datetime.now(UTC)  # once per batch, not per message
    oldest: float | None = None
    for message in messages:
        batch.ack_ids.append(message.ack_id)
        published = message.publish_time_s
        if published is not None and (oldest is None or published < oldest):
            oldest = published
        try:
            event = decode_event(message.data, message.attributes, now=now)
        except InvalidEventError as error:
            batch.rejects.append(Reject(message, reason_code(error.reason), error.reason))
            continue
        if event.event_id in seen:
            batch.duplicates_in_batch += 1
            continue
        seen.add(event.event_id)
        batch.events.append(event)
        batch.sources.append(message)
    batch.oldest_publish_time_s = oldest
    return batch
