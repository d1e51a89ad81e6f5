"""Event ids: time-ordered UUIDs (version 7, RFC 9562), and the month an id carries.

Rule: an event id made by ``new_event_id`` starts with the Unix time in milliseconds at which
it was made, so ids made later sort later and inserts land at the right edge of the primary
key index however large usage_events grows (random v4 ids scatter every batch over the whole
index: issue 21 measured the write path at 0.57x of its empty-table rate at 10M rows).

``event_id_month`` is the rule that places a stored event in a partition of usage_events
(biz2bricks_core.event_partitions): the UTC month of a v7 id's time, or ``UNTIMED`` for an id
that carries no such time (v4 and every other version, caller-supplied ids, rows stored before
revision 0007) or a time past the year 9999 (a v7 id's 48 bits reach 10889; no month a date
can name, so such an id, caller-supplied or fuzzed, is stored untimed, never refused). It
depends on the id alone, so a redelivery or a conflicting duplicate, whatever ``occurred_at``
it carries, lands in the partition of the first copy, and the primary key
(event_id, id_month) stays unique per event_id over the whole table. ``event_id_month_sql`` is
its SQL twin, composed by the batch statement (biz2bricks_core.recording) and by
migration 0007; tests/core/test_event_ids.py runs both on the same cases.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Final

from uuid_utils import compat as _uuid

__all__ = [
    "NEW_ID_SQL",
    "UNTIMED",
    "UUID_V7_FUNCTION",
    "event_id_month",
    "event_id_month_sql",
    "event_id_months",
    "is_time_ordered",
    "new_event_id",
]

# The partition key of ids without a time: below every month a v7 id can carry (1970 on).
UNTIMED: Final = date(1, 1, 1)
_MS_SHIFT: Final = 80  # unix_ts_ms is the top 48 of the 128 bits
# The first day (counted from 1970) past what a date can hold: 10000-01-01, in ms 0xE677D21FDC00.
_END_DAY: Final = 2_932_897
_END_MS_HEX: Final = "e677d21fdc00"


def new_event_id() -> uuid.UUID:
    """A new UUID v7 (a ``uuid.UUID``): time-ordered, monotonic within this process.

    uuid-utils (Rust's ``uuid`` crate) keeps a counter under the millisecond, so ids made in
    the same millisecond, from any thread, still increase.
    """
    return _uuid.uuid7()


def is_time_ordered(event_id: uuid.UUID) -> bool:
    """Whether the id is an RFC 9562 version 7 UUID (and so carries its time): version 7 in
    bits 76-79 and the RFC variant (binary 10) in bits 62-63, as ``uuid.UUID.version == 7``
    says, read from the integer at once (the consumer asks for every event)."""
    value = event_id.int
    return (value >> 76) & 0xF == 7 and (value >> 62) & 0x3 == 0x2


def event_id_month(event_id: uuid.UUID) -> date:
    """The first day of the UTC month of a v7 id's time; ``UNTIMED`` for any other id, and for
    a v7 id whose time lies past the year 9999."""
    if not is_time_ordered(event_id):
        return UNTIMED
    day = (event_id.int >> _MS_SHIFT) // 86_400_000
    return _month_of_day(day) if day < _END_DAY else UNTIMED


def event_id_months(event_ids: Iterable[uuid.UUID]) -> set[date]:
    """The distinct ``event_id_month`` of many ids (a batch's): each id's integer read once,
    the months made from the few distinct days (0.15 against 0.35 ms a batch of 1,000)."""
    days: set[int] = set()
    untimed = False
    for event_id in event_ids:
        value = event_id.int
        day = (value >> _MS_SHIFT) // 86_400_000
        if (value >> 76) & 0xF == 7 and (value >> 62) & 0x3 == 0x2 and day < _END_DAY:
            days.add(day)  # a time-ordered id (is_time_ordered) with a time a date can hold
        else:
            untimed = True
    months = {_month_of_day(day) for day in days}
    if untimed:
        months.add(UNTIMED)
    return months


@lru_cache(maxsize=4096)
def _month_of_day(day: int) -> date:
    """The month of a day counted from the Unix epoch (a batch's ids share a few days)."""
    made = datetime.fromtimestamp(day * 86_400, UTC)
    return date(made.year, made.month, 1)


def event_id_month_sql(event_id: str) -> str:
    """SQL twin of ``event_id_month`` over a uuid expression (a column, never user input).

    Read from the id's 16 bytes (``uuid_send``): the version is the high half of byte 6, the
    variant the top two bits of byte 8, the time the first six bytes (big-endian, so compared
    as bytes against the first millisecond of the year 10000); its day counted from 1970 gives
    the month. Measured in the batch statement: 0.6 ms a batch of 1,000 against
    1.4 ms for the same reading from the id's text through ``to_timestamp``.
    """
    raw = f"uuid_send({event_id})"
    ms = f"CAST(CAST('x' || encode(substring({raw} FROM 1 FOR 6), 'hex') AS bit(48)) AS bigint)"
    return (
        f"CASE WHEN get_byte({raw}, 6) >> 4 = 7 AND get_byte({raw}, 8) >> 6 = 2"
        f" AND substring({raw} FROM 1 FOR 6) < decode('{_END_MS_HEX}', 'hex')"
        f" THEN CAST(date_trunc('month', CAST(DATE '1970-01-01'"
        f" + CAST({ms} / 86400000 AS integer) AS timestamp)) AS date)"
        f" ELSE DATE '{UNTIMED.isoformat()}' END"
    )


# The SQL twin of ``new_event_id`` for ids PostgreSQL makes itself (the token holds': migration
# 0013 sets it as their default). PostgreSQL 15 has no v7 generator; this is the common
# construction: a random v4's bytes with the first six replaced by the Unix time in
# milliseconds and the version nibble set to 7 (bits 52 and 53 of set_bit's numbering; the
# variant bits are already RFC 9562's). Time-ordered but, unlike new_event_id, not monotonic
# within a millisecond. Holds made in time order are deleted in time order too: the batch that
# settles them probes a few adjacent pages of the primary key, not a thousand random ones (the
# settling part of the batch statement fell from 18% to 11% of it).
UUID_V7_FUNCTION: Final = """
CREATE OR REPLACE FUNCTION biz2bricks_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
        PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)
            FROM 3)
        FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$
"""
NEW_ID_SQL: Final = "biz2bricks_uuid_v7()"
