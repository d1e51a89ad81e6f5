"""The usage event contract: wire format v1 of a Pub/Sub message, and its encode/decode helpers.

Importing this module must stay light (no SQLAlchemy): the producer library depends on it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
)

from biz2bricks_core.errors import InvalidEventError
from biz2bricks_core.pricing import price_variant

__all__ = [
    "EARLIEST_OCCURRED_AT",
    "EVENT_TYPE_TOKENS",
    "MAX_BODY_BYTES",
    "MAX_FUTURE_SKEW",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "SCHEMA_VERSION",
    "UsageEvent",
    "check_rules",
    "decode_event",
    "encode_event",
    "event_attributes",
    "storable_text",
    "validate_event",
]

EVENT_TYPE_TOKENS: Final = "llm.tokens"
SCHEMA_VERSION: Final = "1"
MAX_BODY_BYTES: Final = 64 * 1024
MAX_METADATA_BYTES: Final = 8 * 1024
MAX_FUTURE_SKEW: Final = timedelta(minutes=5)
# No LLM call happened before this. The floor also keeps every stored instant readable: an
# offset like +14:00 on year 1 is a UTC instant before year 1, which PostgreSQL stores but
# Python cannot represent, so reading the row back (duplicate checks, reports) would fail.
EARLIEST_OCCURRED_AT: Final = datetime(2000, 1, 1, tzinfo=UTC)
# Nesting levels of objects and arrays inside ``metadata``; the JSON parser itself refuses a
# body nested deeper than ~200 levels, so nothing deeper ever reaches Python.
MAX_METADATA_DEPTH: Final = 16
# PostgreSQL text and jsonb cannot hold U+0000: an event carrying it would fail its batch.
NUL: Final = "\x00"
# One LLM call cannot plausibly use more; the cap keeps per-period sums far from bigint overflow.
MAX_TOKENS_PER_EVENT: Final = 100_000_000

TokenCount = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS_PER_EVENT)]
Label = Annotated[str, Field(min_length=1, max_length=100)]
OptionalText = Annotated[str | None, Field(default=None, max_length=200)]
# A price-context value as providers report it (``batch``, ``flex``, ``us``, ``mistral/eu``):
# lower case, no spaces; biz2bricks_core.pricing.price_variant composes the row key from it.
# Lower-cased first (in pydantic-core: "Flex" and "flex" are the same tier, and an event is
# never dropped for its case).
ContextValue = Annotated[
    Annotated[
        str,
        StringConstraints(
            strip_whitespace=True,
            to_lower=True,
            min_length=1,
            max_length=40,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_./:-]*$",  # checked before to_lower
        ),
    ]
    | None,
    Field(default=None),
]


class UsageEvent(BaseModel):
    """One LLM call's token usage, as the producer publishes it and the consumer stores it.

    The model checks each field; ``decode_event`` and ``validate_event`` also apply
    ``check_rules`` (cache tokens within input tokens, 1-hour cache writes within cache
    writes, no timestamp from the future).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    event_id: UUID
    organization_id: UUID
    user_id: UUID | None = None
    occurred_at: AwareDatetime
    provider: Label
    model: Label
    input_tokens: TokenCount
    output_tokens: TokenCount
    cache_read_tokens: TokenCount = 0
    cache_write_tokens: TokenCount = 0
    # The part of cache_write_tokens written with a 1-hour TTL (priced apart from 5-minute).
    cache_write_1h_tokens: TokenCount = 0
    operation: OptionalText = None
    request_id: OptionalText = None
    metadata: dict[str, Any] | None = None
    # The token hold (UsageService.reserve_tokens) this call settles.
    reservation_id: UUID | None = None
    # The call's price context (each selects the catalogue's variant rows; None: standard).
    processing: ContextValue = None  # "batch" for a provider's batch API
    service_tier: ContextValue = None  # "flex", "priority", "default", ...
    speed: ContextValue = None  # "fast" (Anthropic fast mode)
    route: ContextValue = None  # region or route: Anthropic inference_geo, OpenRouter route
    # Server-side tool use billed per request.
    web_search_requests: TokenCount = 0

    @field_validator("metadata")
    @classmethod
    def _metadata_storable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            problem = _metadata_problem(value, 1)
            if problem is not None:
                raise ValueError(problem)
            size = len(json.dumps(value, separators=(",", ":"), default=str))
            if size > MAX_METADATA_BYTES:
                raise ValueError(f"is {size} bytes serialized, over {MAX_METADATA_BYTES}")
        return value

    @property
    def price_variant(self) -> str:
        """The price context as the key of the rows that price it ("" standard)."""
        return price_variant(self.processing, self.service_tier, self.speed, self.route)

    @property
    def total_tokens(self) -> int:
        """Tokens counted against limits: input (cached included) plus output."""
        return self.input_tokens + self.output_tokens


def _metadata_problem(value: Any, depth: int) -> str | None:
    """Why a metadata value cannot be stored (too deep, a NUL character), or None.

    ``depth`` counts the objects and arrays around ``value``, itself included.
    """
    if isinstance(value, str):
        return "contains a NUL character" if NUL in value else None
    if isinstance(value, float):  # 1e999 parses as inf; jsonb would get null instead
        return None if math.isfinite(value) else "contains a non-finite number (NaN or Infinity)"
    if isinstance(value, dict | list) and depth > MAX_METADATA_DEPTH:
        return f"nested deeper than {MAX_METADATA_DEPTH} levels"
    if isinstance(value, dict):
        for key, item in value.items():
            if NUL in key:
                return "a key contains a NUL character"
            if (problem := _metadata_problem(item, depth + 1)) is not None:
                return problem
    elif isinstance(value, list):
        for item in value:
            if (problem := _metadata_problem(item, depth + 1)) is not None:
                return problem
    return None


def storable_text(value: str) -> str:
    """``value`` as PostgreSQL text can hold it: NUL written as the escape ``\\u0000``, and
    characters UTF-8 cannot encode (lone surrogates) as backslash escapes. Visible, never lost.
    """
    if NUL in value:
        value = value.replace(NUL, "\\u0000")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode()
    return value


def check_rules(event: UsageEvent, now: datetime | None = None) -> None:
    """The contract's rules across fields and against the clock (the model checks the shape).

    Kept out of the model's validators so that pydantic-core validates a message without
    calling back into Python: decoding is on the consumer's hot path.
    """
    for name in ("provider", "model", "operation", "request_id"):
        text = getattr(event, name)
        if text is not None and NUL in text:
            raise InvalidEventError(f"{name}: contains a NUL character, which cannot be stored")
    cached = event.cache_read_tokens + event.cache_write_tokens
    if cached > event.input_tokens:
        raise InvalidEventError(
            f"cache_read_tokens + cache_write_tokens ({cached}) exceed input_tokens "
            f"({event.input_tokens}); input_tokens must include cached tokens"
        )
    if event.cache_write_1h_tokens > event.cache_write_tokens:
        raise InvalidEventError(
            f"cache_write_1h_tokens ({event.cache_write_1h_tokens}) exceed cache_write_tokens "
            f"({event.cache_write_tokens}); cache_write_tokens must include 1-hour writes"
        )
    if event.occurred_at < EARLIEST_OCCURRED_AT:
        raise InvalidEventError(
            f"occurred_at: {event.occurred_at.isoformat()} is before "
            f"{EARLIEST_OCCURRED_AT:%Y-%m-%d} (UTC)"
        )
    now = now if now is not None else datetime.now(UTC)
    if event.occurred_at > now + MAX_FUTURE_SKEW:  # one comparison on the hot path
        skew = event.occurred_at - now
        raise InvalidEventError(
            f"occurred_at: is {skew.total_seconds():.0f}s in the future "
            f"(at most {MAX_FUTURE_SKEW.total_seconds():.0f}s of clock skew is accepted)"
        )


def _reason(error: ValidationError) -> str:
    """One readable line naming each bad field."""
    parts = []
    for item in error.errors(include_url=False):
        field = ".".join(str(p) for p in item["loc"]) or "body"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return storable_text("; ".join(parts))


_ZERO_OMITTED: Final = ("cache_write_1h_tokens", "web_search_requests")


def event_attributes(event: UsageEvent) -> dict[str, str]:
    """Pub/Sub attributes of an event's message."""
    return {
        "event_type": EVENT_TYPE_TOKENS,
        "schema_version": SCHEMA_VERSION,
        "organization_id": str(event.organization_id),
    }


def encode_event(event: UsageEvent) -> tuple[bytes, dict[str, str]]:
    """The message body (compact JSON) and attributes of an event."""
    # Left out when 0, so that consumers deployed before the field existed accept the body.
    omit = {f for f in _ZERO_OMITTED if not getattr(event, f)} or None
    body = event.model_dump_json(exclude_none=True, exclude=omit).encode()
    if len(body) > MAX_BODY_BYTES:
        raise InvalidEventError(f"body: {len(body)} bytes, over the {MAX_BODY_BYTES} byte limit")
    return body, event_attributes(event)


def decode_event(
    data: bytes, attributes: Mapping[str, str], *, now: datetime | None = None
) -> UsageEvent:
    """Parse and validate one message; raise InvalidEventError with a reason naming the field."""
    if len(data) > MAX_BODY_BYTES:
        raise InvalidEventError(f"body: {len(data)} bytes, over the {MAX_BODY_BYTES} byte limit")
    version = attributes.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InvalidEventError(f"schema_version: unsupported {version!r} (expected '1')")
    event_type = attributes.get("event_type")
    if event_type != EVENT_TYPE_TOKENS:
        raise InvalidEventError(f"event_type: unsupported {event_type!r}")
    try:
        event = UsageEvent.model_validate_json(data)
    except ValidationError as error:
        raise InvalidEventError(_reason(error)) from None
    check_rules(event, now)
    attr_org = attributes.get("organization_id")
    if attr_org is not None and attr_org != str(event.organization_id):
        raise InvalidEventError("organization_id: attribute differs from the body")
    return event


def validate_event(fields: Mapping[str, Any], *, now: datetime | None = None) -> UsageEvent:
    """Build an event from Python values (the producer's path); InvalidEventError on bad input."""
    try:
        event = UsageEvent.model_validate(fields)
    except ValidationError as error:
        raise InvalidEventError(_reason(error)) from None
    check_rules(event, now)
    return event
