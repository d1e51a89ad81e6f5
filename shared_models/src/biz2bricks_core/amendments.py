"""Amendments: a stored event replaced by a corrected one, history kept.

An amend is a void of the original (biz2bricks_core.corrections) and a new event (a new id,
``amends`` naming the original) recorded by the batch statement itself
(biz2bricks_core.recording), so it is priced and counted exactly as the consumer would have,
in one transaction that locks both organizations in the counters' order, and rebuilds the
summaries of both events' days (biz2bricks_core.summaries).
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any, Final

from biz2bricks_core.corrections import void_locked
from biz2bricks_core.counters import lock_counters_sql, lock_order
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import (
    InvalidArgumentError,
    InvalidEventError,
    UnknownEventError,
    UnknownOrganizationError,
)
from biz2bricks_core.event_ids import new_event_id
from biz2bricks_core.events import UsageEvent, validate_event
from biz2bricks_core.late_events import utc_day_of
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_core.pricing import variant_fields
from biz2bricks_core.recording import record_events
from biz2bricks_core.summaries import refresh_summaries

__all__ = ["AMENDABLE", "amend_event"]

# The call's price context as the event names it (stored as its price_variant).
CONTEXT: Final = frozenset({"processing", "service_tier", "speed", "route"})
# What an amendment may change; the rest of the event (request id, metadata) carries over.
# The price context too: a batch call recorded as a standard one is corrected by an amendment.
AMENDABLE: Final = CONTEXT | frozenset(
    {
        "web_search_requests",
        "organization_id",
        "user_id",
        "provider",
        "model",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "operation",
        "occurred_at",
    }
)
ORIGINAL: Final = "SELECT * FROM usage_events WHERE event_id = $1"
AMENDMENT: Final = (
    "SELECT new_event_id FROM usage_corrections WHERE event_id = $1 AND kind = 'amend'"
)
LINK: Final = (
    "WITH e AS (UPDATE usage_events SET amends = $1 WHERE event_id = $2)"
    " UPDATE usage_corrections SET new_event_id = $2 WHERE event_id = $1 AND kind = 'amend'"
)


async def amend_event(
    db: DatabaseManager,
    event_id: uuid.UUID,
    *,
    reason: str,
    actor: str | None,
    changes: dict[str, Any],
) -> uuid.UUID:
    """Replace a stored event by a corrected one; returns the new event's id.

    Amending the same event again with the same changes returns the same new id; an event
    that was voided (or amended otherwise) cannot be amended: amend its amendment instead.
    """
    unknown = set(changes) - AMENDABLE
    if unknown:
        allowed = ", ".join(sorted(AMENDABLE))
        raise InvalidArgumentError(
            f"{', '.join(sorted(unknown))}: cannot be amended (any of {allowed})"
        )
    if not changes:
        raise InvalidArgumentError("changes: name at least one field to amend")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidArgumentError("reason: say why the event is amended (a non-empty string)")
    book = await load_price_book(db, ModelNames())
    async with db.unavailable_as_error(), db.driver() as conn, conn.transaction():
        original = await conn.fetchrow(ORIGINAL, event_id)
        if original is None:
            raise UnknownEventError(f"usage event {event_id} is not stored (or was archived)")
        amended = _amended(original, changes)
        if original["voided_at"] is not None:
            return await _same_amendment(conn, original, amended)
        orgs = lock_order([original["organization_id"], amended.organization_id])
        locked = await conn.fetch(lock_counters_sql("SELECT unnest($1::uuid[])"), orgs)
        if len(locked) != len(orgs):
            raise UnknownOrganizationError(
                f"organization {amended.organization_id} has no usage_limits row"
            )
        voided = await void_locked(
            conn,
            original["organization_id"],
            [event_id],
            None,
            None,
            None,
            reason,
            actor,
            "amend",
            refresh=False,  # below, with the amendment's day: days are locked in order
        )
        if voided.voided != 1:
            # Voided or amended by a concurrent correction since it was read: under the locks
            # now, it is a retry of that amendment or refused, never a second replacement.
            return await _same_amendment(conn, await conn.fetchrow(ORIGINAL, event_id), amended)
        recorded = await record_events(conn, [amended], book)
        if recorded.inserted != 1:
            raise RuntimeError(f"the amendment {amended.event_id} of {event_id} was not stored")
        await conn.execute(LINK, event_id, amended.event_id)
        await refresh_summaries(
            conn,
            {
                (original["organization_id"], utc_day_of(original["occurred_at"])),
                (amended.organization_id, utc_day_of(amended.occurred_at)),
            },
        )
        return amended.event_id


def _amended(original: Any, changes: dict[str, Any]) -> UsageEvent:
    """The replacing event: the original's fields with ``changes``, a new id, no hold."""
    fields = {name: original[name] for name in UsageEvent.model_fields if name in original}
    fields.update(variant_fields(original["price_variant"] or ""))
    if isinstance(fields.get("metadata"), str):
        fields["metadata"] = json.loads(fields["metadata"], parse_float=Decimal)
    fields.update(changes, event_id=new_event_id(), reservation_id=None)
    try:
        return validate_event(fields)
    except InvalidEventError as error:
        raise InvalidArgumentError(f"the amended event is invalid: {error.reason}") from None


def _stored_as(stored: Any, amended: UsageEvent) -> bool:
    """Whether a stored event carries what ``amended`` would (its context as price_variant)."""
    same = all(stored[name] == getattr(amended, name) for name in AMENDABLE - CONTEXT)
    return same and stored["price_variant"] == amended.price_variant


async def _same_amendment(conn: Any, original: Any, amended: UsageEvent) -> uuid.UUID:
    """A retry of an amendment returns its event; anything else on a voided event is refused."""
    new_id = await conn.fetchval(AMENDMENT, original["event_id"])
    if new_id is not None:
        stored = await conn.fetchrow(ORIGINAL, new_id)
        if stored is not None and _stored_as(stored, amended):
            return uuid.UUID(str(new_id))
    hint = f" (its amendment is {new_id}: amend that one)" if new_id is not None else ""
    raise InvalidArgumentError(
        f"event_id: {original['event_id']} was voided and cannot be amended{hint}"
    )
