"""Checks of UsageService arguments: a bad one is an InvalidArgumentError naming it."""

from __future__ import annotations

import uuid
from datetime import datetime

from biz2bricks_core.errors import InvalidArgumentError


def as_uuid(name: str, value: uuid.UUID | str) -> uuid.UUID:
    """Accept a UUID or its string."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidArgumentError(f"{name}: {value!r} is not a UUID") from None


def as_org_id(value: uuid.UUID | str) -> uuid.UUID:
    """An organization id: a UUID or its string."""
    return as_uuid("organization_id", value)


def as_count(name: str, value: int, *, minimum: int = 0) -> int:
    """An int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name}: must be an int >= {minimum}, got {value!r}")
    return value


def as_ttl(ttl_s: float, maximum_s: float) -> float:
    """A hold's time to live in seconds, in (0, maximum_s]."""
    if (
        isinstance(ttl_s, bool)
        or not isinstance(ttl_s, int | float)
        or not (0 < ttl_s <= maximum_s)
    ):
        raise InvalidArgumentError(f"ttl_s: must be > 0 and <= {maximum_s:.0f}, got {ttl_s!r}")
    return float(ttl_s)


def as_moment(name: str, value: datetime | None) -> datetime | None:
    """A timezone-aware datetime, or None."""
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidArgumentError(f"{name}: must be a timezone-aware datetime, got {value!r}")
    return value
