"""Event ids: v7, time-ordered and monotonic; the month an id carries, in Python and in SQL."""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from datetime import UTC, date, datetime

from sqlalchemy import text

import biz2bricks_core
from biz2bricks_core import DatabaseManager, new_event_id
from biz2bricks_core.event_ids import (
    NEW_ID_SQL,
    UNTIMED,
    event_id_month,
    event_id_month_sql,
    event_id_months,
    is_time_ordered,
)
from tests.factories import provisioned_org


def v7_at(moment: datetime, tail: int = 0x7ABC_8DEF_0123_4567_89AB) -> uuid.UUID:
    """A v7 id whose time is ``moment`` (version and variant bits set in ``tail``)."""
    ms = int(moment.timestamp() * 1000)
    return uuid.UUID(int=(ms << 80) | tail)


CASES = [
    v7_at(datetime(2025, 1, 31, 23, 59, 59, 999000, tzinfo=UTC)),
    v7_at(datetime(2025, 2, 1, tzinfo=UTC)),
    v7_at(datetime(1970, 1, 1, tzinfo=UTC)),
    v7_at(datetime(2999, 12, 31, 12, tzinfo=UTC)),
    v7_at(datetime(2025, 6, 1, tzinfo=UTC), tail=0x7000_8000_0000_0000_0000),
    uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),  # v4
    uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8"),  # v1 (carries a time of its own)
    uuid.UUID("017f22e2-79b0-7cc3-18c4-dc0c0c07398f"),  # version digit 7, NCS variant
    uuid.UUID(int=0),
    uuid.UUID(int=(1 << 128) - 1),
]


def test_new_event_id_is_a_stdlib_v7_uuid_carrying_the_current_month() -> None:
    before = datetime.now(UTC)
    event_id = new_event_id()
    assert type(event_id) is uuid.UUID
    assert event_id.version == 7
    assert event_id_month(event_id) in {
        date(before.year, before.month, 1),
        date(datetime.now(UTC).year, datetime.now(UTC).month, 1),
    }
    assert "new_event_id" in biz2bricks_core.__all__


def test_ids_increase_call_after_call_even_within_one_millisecond() -> None:
    ids = [new_event_id() for _ in range(50_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)


def test_ids_increase_across_threads_in_the_order_they_are_made() -> None:
    # Given four threads each taking ids under one lock, in turn
    lock = threading.Lock()
    made: list[uuid.UUID] = []

    def take() -> None:
        for _ in range(5_000):
            with lock:
                made.append(new_event_id())

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then the process-wide order of calls is the order of the ids
    assert all(a < b for a, b in itertools.pairwise(made))


def test_the_month_of_an_id_is_its_utc_month_or_untimed() -> None:
    assert event_id_month(CASES[0]) == date(2025, 1, 1)
    assert event_id_month(CASES[1]) == date(2025, 2, 1)
    assert event_id_month(CASES[2]) == date(1970, 1, 1)
    assert [event_id_month(u) for u in CASES[5:]] == [UNTIMED] * 5


async def test_the_month_of_an_id_in_sql_equals_the_python_rule(db: DatabaseManager) -> None:
    statement = text("SELECT " + event_id_month_sql("CAST(:id AS uuid)"))
    cases = [*CASES, *(new_event_id() for _ in range(3)), *(uuid.uuid4() for _ in range(3))]
    async with db.engine.connect() as conn:
        for case in cases:
            sql = (await conn.execute(statement, {"id": case})).scalar_one()
            assert sql == event_id_month(case), case


def edge_ids(seed: int, count: int) -> list[uuid.UUID]:
    """Ids of every version and variant, with times at month edges and anywhere a datetime
    can hold."""
    rng = random.Random(seed)
    edges = [
        datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
        datetime(2024, 3, 1, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2199, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
    ]
    ids = []
    for _ in range(count):
        if rng.random() < 0.5:  # a time at a month's edge
            ms = max(int(rng.choice(edges).timestamp() * 1000) + rng.choice((-1, 0, 1)), 0)
        else:
            ms = rng.randrange(253_402_300_800_000)
        value = rng.getrandbits(80) | (ms << 80)
        for version, variant in itertools.product((4, 7, 8), (0b00, 0b10, 0b11)):
            bits = (value & ~(0xF << 76) & ~(0x3 << 62)) | (version << 76) | (variant << 62)
            ids.append(uuid.UUID(int=bits))
    return ids


def test_time_ordered_ids_and_their_months_read_from_bits_equal_the_stdlib_reading() -> None:
    for event_id in edge_ids(21, 2_000):
        # The reading from the integer is the stdlib's, and so is the month
        assert is_time_ordered(event_id) is (event_id.version == 7), event_id
        if event_id.version == 7:
            made = datetime.fromtimestamp((event_id.int >> 80) / 1000, UTC)
            assert event_id_month(event_id) == date(made.year, made.month, 1), event_id
        else:
            assert event_id_month(event_id) == UNTIMED


def test_the_months_of_many_ids_are_the_months_of_each() -> None:
    ids = edge_ids(5, 300)
    assert event_id_months(ids) == {event_id_month(e) for e in ids}
    # A batch of v7 ids alone, and one of ids without a time, and no ids
    timed = [e for e in ids if is_time_ordered(e)]
    assert event_id_months(timed) == {event_id_month(e) for e in timed}
    assert UNTIMED not in event_id_months(timed)
    assert event_id_months(CASES[5:]) == {UNTIMED}
    assert event_id_months([]) == set()


def beyond_year_9999(seed: int, count: int) -> list[uuid.UUID]:
    """v7 ids whose 48-bit time lies past what a date holds (from 10000-01-01 to 10889)."""
    rng = random.Random(seed)
    first, last = 253_402_300_800_000, (1 << 48) - 1
    times = [first - 1, first, first + 1, last, *(rng.randrange(first, last) for _ in range(count))]
    return [
        uuid.UUID(
            int=(ms << 80)
            | (rng.getrandbits(80) & ~(0xF << 76) & ~(0x3 << 62))
            | (7 << 76)
            | (0b10 << 62)
        )
        for ms in times
    ]


async def sql_months(db: DatabaseManager, ids: list[uuid.UUID]) -> list[date]:
    """``event_id_month_sql`` of each id, in order, as PostgreSQL computes it."""
    statement = text(
        f"SELECT {event_id_month_sql('e')} FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY"
        " AS t(e, n) ORDER BY n"
    )
    async with db.engine.connect() as conn:
        return list((await conn.execute(statement, {"ids": ids})).scalars().all())


async def test_a_v7_id_past_the_year_9999_is_untimed_in_python_and_sql(db: DatabaseManager) -> None:
    # Given v7 ids around and past the last millisecond of 9999 (a tenth of random v7 ids)
    ids = beyond_year_9999(9, 200)
    # Then the one before the edge has a month, the others are untimed, never an error
    assert event_id_month(ids[0]) == date(9999, 12, 1)
    assert [event_id_month(e) for e in ids[1:]] == [UNTIMED] * (len(ids) - 1)
    assert event_id_months(ids) == {date(9999, 12, 1), UNTIMED}
    assert await sql_months(db, ids) == [event_id_month(e) for e in ids]


async def test_the_month_of_every_kind_of_id_in_sql_equals_the_python_rule(
    db: DatabaseManager,
) -> None:
    ids = edge_ids(7, 500)
    assert await sql_months(db, ids) == [event_id_month(e) for e in ids]


async def test_ids_made_by_postgresql_are_v7_carrying_the_time_they_were_made(
    db: DatabaseManager,
) -> None:
    # When PostgreSQL makes ids with the twin of new_event_id, a few milliseconds apart
    made = []
    async with db.engine.connect() as conn:
        for _ in range(5):
            row = (
                await conn.execute(text(f"SELECT {NEW_ID_SQL}, clock_timestamp(), pg_sleep(0.002)"))
            ).one()
            made.append((row[0], row[1]))
    for made_id, at in made:
        # Then each is a stdlib v7 uuid whose time is when it was made
        assert made_id.version == 7, made_id
        assert is_time_ordered(made_id), made_id
        ms = made_id.int >> 80
        assert abs(ms - at.timestamp() * 1000) < 5, (made_id, at)
        assert event_id_month(made_id) == date(at.year, at.month, 1)
    # And later ids sort later
    ids = [made_id for made_id, _ in made]
    assert ids == sorted(ids)


async def test_a_token_hold_gets_a_time_ordered_id(db: DatabaseManager) -> None:
    org = await provisioned_org(db, plan="free")
    hold = await biz2bricks_core.UsageService(db).reserve_tokens(org, 1_000)
    assert hold.reservation_id is not None
    assert is_time_ordered(hold.reservation_id)
