"""Period statements: what an organization used and owes for one billing period.

A statement is open while its period runs and for ``USAGE_STATEMENT_GRACE_HOURS`` after it
(late events still land in it); the rollup run then closes it: its content is written once,
as text, and never changes (``usage_statements``). What arrives or is corrected later for a
closed period is an adjustment, booked on the statement of the period in which it arrived (a
late event by its ``received_at``, a void by its correction's ``created_at``), naming the
period it belongs to. Each fact is so on exactly one statement, and a closed statement reads
back byte for byte as it was sent. One gap is known: ``received_at`` is its writing
transaction's start, so an event of a period closed more than the grace ago, in a consumer
batch that began before that organization's close and committed after it (a window of
milliseconds), is on neither; closing against a commit order rather than a time would remove it.

An open statement is computed from the facts when asked: its lines from the non-voided events
that occurred in the period, its adjustments as above; ``credits_consumed`` from the ledger
(consume less restore rows of the period); ``overage_tokens`` is the usage beyond the plan that
no grant paid.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import InvalidArgumentError, UnknownOrganizationError
from biz2bricks_core.periods import period_bounds

__all__ = ["Statement", "StatementLine", "close_statements", "statement_of"]

_SUMS: Final = (
    "count(*) AS requests, coalesce(sum(e.input_tokens), 0) AS input_tokens,"
    " coalesce(sum(e.output_tokens), 0) AS output_tokens,"
    " coalesce(sum(e.cache_read_tokens), 0) AS cache_read_tokens,"
    " coalesce(sum(e.cache_write_tokens), 0) AS cache_write_tokens,"
    " coalesce(sum(e.cost_usd), 0) AS cost_usd, count(*) - count(e.cost_usd) AS unpriced"
)
LINES: Final = (
    f"SELECT NULL::timestamptz AS belongs_to, NULL::text AS kind, e.provider, e.model, {_SUMS}"
    " FROM usage_events e WHERE e.organization_id = $1 AND e.occurred_at >= $2"
    " AND e.occurred_at < $3 AND e.voided_at IS NULL"
    " GROUP BY e.provider, e.model ORDER BY e.provider, e.model"
)
# Booked on the statement of [$2, $3): late events for periods already closed when they
# arrived, and corrections (negative) of events of such periods.
ADJUSTMENTS: Final = f"""
SELECT * FROM (
    SELECT s.period_start AS belongs_to, 'late_event' AS kind, e.provider, e.model, {_SUMS}
    FROM usage_events e JOIN usage_statements s ON s.organization_id = e.organization_id
        AND e.occurred_at >= s.period_start AND e.occurred_at < s.period_end
    WHERE e.organization_id = $1 AND e.received_at >= $2 AND e.received_at < $3
        AND e.received_at > s.closed_at
    GROUP BY s.period_start, e.provider, e.model
    UNION ALL
    SELECT s.period_start, c.kind, e.provider, e.model, -count(*),
        -coalesce(sum(e.input_tokens), 0), -coalesce(sum(e.output_tokens), 0),
        -coalesce(sum(e.cache_read_tokens), 0), -coalesce(sum(e.cache_write_tokens), 0),
        -coalesce(sum(e.cost_usd), 0), -(count(*) - count(e.cost_usd))
    FROM usage_corrections c JOIN usage_events e ON e.event_id = c.event_id
    JOIN usage_statements s ON s.organization_id = c.organization_id
        AND c.occurred_at >= s.period_start AND c.occurred_at < s.period_end
    WHERE c.organization_id = $1 AND c.created_at >= $2 AND c.created_at < $3
        AND c.created_at > s.closed_at
    GROUP BY s.period_start, c.kind, e.provider, e.model
) a ORDER BY belongs_to, kind, provider, model
"""
# The period's consume rows less its restores, and what the batch path paid from the grants'
# cache in the period that the grants still owe (biz2bricks_core.credits.owed).
CONSUMED: Final = (
    "SELECT coalesce(sum(CASE WHEN kind = 'consume' THEN tokens ELSE -tokens END), 0)"
    " + coalesce((SELECT grants_pending FROM usage_limits WHERE organization_id = $1"
    "   AND grants_pending_period = $2), 0)"
    " FROM credit_ledger WHERE organization_id = $1 AND period_start = $2"
    " AND kind IN ('consume', 'restore')"
)
ORGANIZATION: Final = (
    "SELECT now() AS now, token_limit, period_unit, created_at FROM usage_limits"
    " WHERE organization_id = $1"
)
CLOSED: Final = "SELECT body FROM usage_statements WHERE organization_id = $1 AND period_start = $2"
CLOSE: Final = (
    "INSERT INTO usage_statements (organization_id, period_start, period_end, closed_at, body)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (organization_id, period_start) DO NOTHING"
)
# From the organization's first period: its creation, or its oldest event if older.
DUE: Final = (
    "SELECT l.organization_id, l.period_unit, least(l.created_at, (SELECT min(e.occurred_at)"
    " FROM usage_events e WHERE e.organization_id = l.organization_id)) AS first"
    " FROM usage_limits l ORDER BY l.organization_id"
)
CLOSED_PERIODS: Final = "SELECT period_start FROM usage_statements WHERE organization_id = $1"


@dataclass(frozen=True, slots=True)
class StatementLine:
    """Usage of one provider and model; an adjustment also names the period it belongs to
    (``belongs_to``) and what it is (``late_event``, ``void``, ``amend``; negative for a
    correction)."""

    provider: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal
    unpriced_events: int = 0
    belongs_to: datetime | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class Statement:
    """One organization's statement for one period (see the module docstring)."""

    organization_id: uuid.UUID
    period_start: datetime
    period_end: datetime
    status: str
    closed_at: datetime | None
    lines: list[StatementLine] = field(default_factory=list)
    adjustments: list[StatementLine] = field(default_factory=list)
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced_events: int = 0
    plan_limit: int | None = None
    credits_consumed: int = 0
    overage_tokens: int = 0

    def to_json(self) -> str:
        """The statement as JSON text (what a closed statement stores and returns)."""
        return json.dumps(asdict(self), default=_json_default, sort_keys=True)

    @classmethod
    def from_json(cls, body: str) -> Statement:
        """Read back what ``to_json`` wrote."""
        data = json.loads(body, parse_float=Decimal)
        lines = [_line(x) for x in data.pop("lines")]
        adjustments = [_line(x) for x in data.pop("adjustments")]
        return cls(
            organization_id=uuid.UUID(data["organization_id"]),
            period_start=datetime.fromisoformat(data["period_start"]),
            period_end=datetime.fromisoformat(data["period_end"]),
            status=data["status"],
            closed_at=_moment(data["closed_at"]),
            lines=lines,
            adjustments=adjustments,
            tokens=data["tokens"],
            cost_usd=Decimal(data["cost_usd"]),
            unpriced_events=data["unpriced_events"],
            plan_limit=data["plan_limit"],
            credits_consumed=data["credits_consumed"],
            overage_tokens=data["overage_tokens"],
        )


def _moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON: {value!r}")


def _line(data: dict[str, Any]) -> StatementLine:
    return StatementLine(
        provider=data["provider"],
        model=data["model"],
        requests=data["requests"],
        input_tokens=data["input_tokens"],
        output_tokens=data["output_tokens"],
        cache_read_tokens=data["cache_read_tokens"],
        cache_write_tokens=data["cache_write_tokens"],
        cost_usd=Decimal(data["cost_usd"]),
        unpriced_events=data["unpriced_events"],
        belongs_to=_moment(data.get("belongs_to")),
        kind=data.get("kind"),
    )


def _row_line(r: Any) -> StatementLine:
    return StatementLine(
        provider=r["provider"],
        model=r["model"],
        requests=int(r["requests"]),
        input_tokens=int(r["input_tokens"]),
        output_tokens=int(r["output_tokens"]),
        cache_read_tokens=int(r["cache_read_tokens"]),
        cache_write_tokens=int(r["cache_write_tokens"]),
        cost_usd=r["cost_usd"],
        unpriced_events=int(r["unpriced"]),
        belongs_to=r["belongs_to"],
        kind=r["kind"],
    )


async def _compute(
    conn: Any, org: uuid.UUID, start: datetime, end: datetime, limit: int | None
) -> Statement:
    lines = [_row_line(r) for r in await conn.fetch(LINES, org, start, end)]
    adjustments = [_row_line(r) for r in await conn.fetch(ADJUSTMENTS, org, start, end)]
    consumed = int(await conn.fetchval(CONSUMED, org, start))
    used = sum(x.input_tokens + x.output_tokens for x in lines)
    beyond = 0 if limit is None else max(used - limit, 0)
    every = lines + adjustments
    return Statement(
        organization_id=org,
        period_start=start,
        period_end=end,
        status="open",
        closed_at=None,
        lines=lines,
        adjustments=adjustments,
        tokens=sum(x.input_tokens + x.output_tokens for x in every),
        cost_usd=sum((x.cost_usd for x in every), Decimal(0)),
        unpriced_events=sum(x.unpriced_events for x in every),
        plan_limit=limit,
        credits_consumed=consumed,
        overage_tokens=max(beyond - consumed, 0),
    )


async def statement_of(db: DatabaseManager, org: uuid.UUID, period_start: datetime) -> Statement:
    """The organization's statement of the period beginning at ``period_start``."""
    if period_start.tzinfo is None:
        raise InvalidArgumentError("period_start: must be a timezone-aware datetime")
    async with (
        db.unavailable_as_error(),
        db.driver() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        info = await conn.fetchrow(ORGANIZATION, org)
        if info is None:
            raise UnknownOrganizationError(f"organization {org} has no usage_limits row")
        start, end = period_bounds(period_start, info["period_unit"])
        if start != period_start:
            raise InvalidArgumentError(
                f"period_start: {period_start.isoformat()} is not the start of a period"
                f" (did you mean {start.isoformat()}?)"
            )
        body = await conn.fetchval(CLOSED, org, start)
        if body is not None:
            return Statement.from_json(body)
        return await _compute(conn, org, start, end, info["token_limit"])


async def close_statements(db: DatabaseManager, grace: timedelta) -> int:
    """Close every statement whose period ended more than ``grace`` ago; how many closed.

    Each close computes the statement and writes it in one transaction; a statement is closed
    once (a second run, or a second replica, writes nothing).
    """
    closed = 0
    async with db.driver() as conn:
        organizations = await conn.fetch(DUE)
    for org, unit, created in organizations:
        async with db.driver() as conn:
            done = {r[0] for r in await conn.fetch(CLOSED_PERIODS, org)}
            start, end = period_bounds(created, unit)
            while True:
                async with conn.transaction(isolation="repeatable_read"):
                    now = await conn.fetchval("SELECT now()")
                    if end + grace > now:
                        break
                    if start not in done:
                        limit = await conn.fetchval(
                            "SELECT token_limit FROM usage_limits WHERE organization_id = $1", org
                        )
                        statement = await _compute(conn, org, start, end, limit)
                        final = _closed(statement, now)
                        await conn.execute(CLOSE, org, start, end, now, final.to_json())
                        closed += 1
                start, end = period_bounds(end, unit)
    return closed


def _closed(statement: Statement, at: datetime) -> Statement:
    data = {f: getattr(statement, f) for f in Statement.__dataclass_fields__}
    data.update(status="closed", closed_at=at)
    return Statement(**data)
