"""The partitions of usage_events: one per month an event id carries, made by the pipeline.

Design (issue 21). usage_events is partitioned by RANGE over ``id_month``, a column that holds
``event_id_month(event_id)`` (biz2bricks_core.event_ids): the UTC month of a v7 id's time, or
``UNTIMED`` (0001-01-01) for an id that carries none (v4 ids stored before revision 0007,
caller-supplied ids of other versions). The primary key is (event_id, id_month); since the key
is a function of the id alone, a redelivery or a conflicting duplicate always meets the first
copy in the same partition, whatever ``occurred_at`` it carries, and ``ON CONFLICT`` keeps
promise 1 over the whole table. ``occurred_at`` still decides the billing period and the day
of the summaries; it is not the partition key, because a key a client can change between two
deliveries of one event would let both copies in.

Partitions:

- ``usage_events_untimed`` FROM (MINVALUE) TO ('1970-01-01'): every id without a time. It is
  never dropped; the archive deletes its rows month by month (few once the producer makes v7
  ids: only the rows of the migration and caller-supplied ids).
- ``usage_events_yYYYYmMM`` FROM (first day) TO (first day of the next month), one per month.

Who creates them, so that no event waits for a partition: migration 0007 (every month its rows
need, and the next ``AHEAD_MONTHS``), the rollup run (the current month and the next
``AHEAD_MONTHS``, every day), and the consumer on demand for any month a batch needs that it
has not seen (an id far in the future, say) before it writes the batch. Creation is idempotent
and serialized by a transaction-scoped advisory lock; each process caches the months it knows.
A partition is created empty as a plain table and then ATTACHed, which takes only a SHARE
UPDATE EXCLUSIVE lock on usage_events: inserts and reads go on meanwhile (CREATE TABLE ..
PARTITION OF would take an ACCESS EXCLUSIVE lock). No DEFAULT partition: a row there would
block creating its month's partition later.

Retention drops whole partitions (biz2bricks_rollup.archive) once every row in them has been
archived: the disk is freed at once, with no DELETE bloat for vacuum to chase.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from typing import Any, Final

from biz2bricks_core.event_ids import UNTIMED
from biz2bricks_core.retention import add_months

__all__ = [
    "AHEAD_MONTHS",
    "PARENT",
    "UNTIMED_PARTITION",
    "create_partition_sql",
    "detach_and_drop_sql",
    "ensure_partitions",
    "existing_partitions",
    "is_partition_name",
    "partition_name",
]

PARENT: Final = "usage_events"
UNTIMED_PARTITION: Final = "usage_events_untimed"
AHEAD_MONTHS: Final = 2
LOCK_KEY: Final = 0x62327262_70617274  # "b2rb" "part": creation of partitions
_NAME = re.compile(r"^usage_events_y(\d{4})m(\d{2})$")

EXISTING = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = to_regclass('usage_events')"
)


def partition_name(month: date) -> str:
    """The table of one month's partition (``UNTIMED`` names the partition without time)."""
    if month == UNTIMED:
        return UNTIMED_PARTITION
    return f"usage_events_y{month.year:04d}m{month.month:02d}"


def is_partition_name(name: str) -> bool:
    """Whether ``name`` is a partition of usage_events (Alembic's comparison skips them)."""
    return name == UNTIMED_PARTITION or _NAME.match(name) is not None


def _month_of_name(name: str) -> date:
    if name == UNTIMED_PARTITION:
        return UNTIMED
    found = _NAME.match(name)
    if found is None:
        raise ValueError(f"not a partition of usage_events: {name}")
    return date(int(found[1]), int(found[2]), 1)


def create_partition_sql(month: date) -> list[str]:
    """Statements that create one month's partition empty, then attach it.

    Names and bounds are formatted from a date, never from input text.
    """
    name = partition_name(month)
    if month == UNTIMED:
        bounds = "FROM (MINVALUE) TO ('1970-01-01')"
    else:
        bounds = f"FROM ('{month.isoformat()}') TO ('{add_months(month, 1).isoformat()}')"
    return [
        f"CREATE TABLE IF NOT EXISTS {name}"
        f" (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
        f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES {bounds}",
    ]


def detach_and_drop_sql(month: date) -> list[str]:
    """Statements that remove one month's partition and its rows (the caller archived them)."""
    name = partition_name(month)
    return [f"ALTER TABLE {PARENT} DETACH PARTITION {name}", f"DROP TABLE {name}"]


async def existing_partitions(conn: Any) -> set[date]:
    """The months (and ``UNTIMED``) that have a partition, on an asyncpg connection."""
    return {_month_of_name(r["relname"]) for r in await conn.fetch(EXISTING)}


async def ensure_partitions(conn: Any, months: Iterable[date]) -> set[date]:
    """Create the partitions of ``months`` that are missing; return every existing month.

    One short transaction under an advisory lock, so concurrent callers (consumer replicas,
    the rollup) create each partition once. ``conn`` is an asyncpg connection outside a
    transaction.
    """
    wanted = set(months)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        existing = await existing_partitions(conn)
        for month in sorted(wanted - existing):
            for statement in create_partition_sql(month):
                await conn.execute(statement)
            existing.add(month)
    return existing
