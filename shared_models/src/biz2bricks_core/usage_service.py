"""UsageService: the synchronous limit checks on the AI service's and backend API's request paths.

Each check is one round trip: a primary-key read for tokens, one conditional UPDATE (with its
audit row in the same statement) for storage, one function call for a token hold.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from sqlalchemy import text

from biz2bricks_core import _grants
from biz2bricks_core._arguments import as_count, as_moment, as_org_id, as_ttl, as_uuid
from biz2bricks_core._provisioning import provision
from biz2bricks_core.allowance import allowance, remaining, token_reason
from biz2bricks_core.config import Settings
from biz2bricks_core.credits import CreditGrant, live_grants_remaining_sql
from biz2bricks_core.database import DATABASE_DOWN_ERRORS, DatabaseManager
from biz2bricks_core.errors import (
    InvalidArgumentError,
    UnknownOrganizationError,
)
from biz2bricks_core.holds import (
    LIVE_RESERVED,
    MAX_HOLD_TTL_S,
    RELEASE,
    RESERVE,
    TokenHold,
    hold_from_row,
)
from biz2bricks_core.periods import period_reading, period_reading_sql
from biz2bricks_core.usage_query import query_usage
from biz2bricks_core.usage_windows import UsageRow, query_spec

__all__ = [
    "DATABASE_DOWN_ERRORS",
    "LimitDecision",
    "TokenHold",
    "UsageRow",
    "UsageService",
    "UsageServiceSettings",
    "UsageSnapshot",
    "as_org_id",
    "token_decision",
]

log = logging.getLogger(__name__)

# The request-path statements run on the pooled connection's asyncpg driver directly: one
# round trip each, without a result-processing layer (see docs/benchmarks.md for why).
_TOKEN_CHECK = (
    "SELECT token_limit, grants_consumed_period, tokens_used_period, soft_limit, period_end,"
    f" counters_updated_at, now() AS now, {LIVE_RESERVED} AS reserved,"
    f" {live_grants_remaining_sql('l')} AS grants_live"
    " FROM usage_limits l WHERE organization_id = $1"
)
_RESERVE = (
    "WITH changed AS ("
    " UPDATE usage_limits SET storage_used_bytes = storage_used_bytes + $2, updated_at = now()"
    " WHERE organization_id = $1 AND (storage_limit_bytes IS NULL"
    "   OR storage_used_bytes + $2 <= storage_limit_bytes)"
    " RETURNING organization_id, storage_used_bytes, storage_limit_bytes),"
    " audit AS (INSERT INTO audit_logs (organization_id, user_id, action, entity_type, details)"
    "   SELECT organization_id, $3, 'storage.reserve', 'usage_limits',"
    "   jsonb_build_object('bytes', $2::bigint, 'used_after', storage_used_bytes)"
    "   FROM changed)"
    " SELECT storage_used_bytes, storage_limit_bytes FROM changed"
)
_RELEASE = (
    "WITH changed AS ("
    " UPDATE usage_limits SET storage_used_bytes = greatest(storage_used_bytes - $2, 0),"
    "   updated_at = now() WHERE organization_id = $1"
    " RETURNING organization_id, storage_used_bytes),"
    " audit AS (INSERT INTO audit_logs (organization_id, user_id, action, entity_type, details)"
    "   SELECT organization_id, $3, 'storage.release', 'usage_limits',"
    "   jsonb_build_object('bytes', $2::bigint, 'used_after', storage_used_bytes)"
    "   FROM changed)"
    " SELECT storage_used_bytes FROM changed"
)
_SNAPSHOT = (
    "SELECT plan, period_start, period_end, token_limit,"
    f" {period_reading_sql('l.tokens_used_period', 'l.period_end')} AS tokens,"
    f" {period_reading_sql('l.cost_usd_period', 'l.period_end')} AS cost,"
    f" {period_reading_sql('l.unpriced_events_period', 'l.period_end')} AS unpriced,"
    f" {period_reading_sql('l.grants_consumed_period', 'l.period_end')} AS consumed,"
    f" {live_grants_remaining_sql('l')} AS credits_remaining,"
    # What grants that ended by expiry in this period still held (their breakage).
    " (SELECT coalesce(sum(g.remaining), 0) FROM credit_grants g"
    "   WHERE g.organization_id = l.organization_id AND g.expires_at >= l.period_start"
    "   AND g.expires_at < least(now(), l.period_end)"
    "   AND (g.voided_at IS NULL OR g.voided_at >= g.expires_at)) AS expired,"
    " storage_used_bytes, storage_limit_bytes, counters_updated_at"
    " FROM usage_limits l WHERE organization_id = :org"
)
_STORAGE_STATE = (
    "SELECT storage_used_bytes, storage_limit_bytes FROM usage_limits WHERE organization_id = $1"
)


class UsageServiceSettings(Settings):
    """What a limit check answers when the database is down (each case is logged and counted)."""

    model_config = SettingsConfigDict(env_prefix="USAGE_", env_file=".env", extra="ignore")

    token_check_fail_open: bool = Field(default=True)
    storage_fail_open: bool = Field(default=False)
    # How long a token hold counts when its event never arrives (USAGE_HOLD_TTL_S).
    hold_ttl_s: float = Field(default=900.0, gt=0, le=MAX_HOLD_TTL_S)


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """The answer of a limit check. ``limit`` None means unlimited.

    ``reserved`` is the organization's total of live token holds (0 for storage); ``remaining``
    is limit - used - reserved, never below 0.
    """

    allowed: bool
    used: int
    limit: int | None
    remaining: int | None
    reason: str
    reserved: int = 0
    period_end: datetime | None = None
    counters_updated_at: datetime | None = None
    counter_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """An organization's usage against its limits, for dashboards."""

    organization_id: uuid.UUID
    plan: str
    period_start: datetime
    period_end: datetime
    tokens_used_period: int
    token_limit: int | None
    # What the live credit grants still hold, what grants paid for in this period (usage
    # beyond the plan), and what grants that expired in this period left unused.
    credits_remaining: int
    grants_consumed_period: int
    grants_expired_period: int
    cost_usd_period: Decimal
    storage_used_bytes: int
    storage_limit_bytes: int | None
    counters_updated_at: datetime | None
    # Events of the period with no price: cost_usd_period is the cost of the others only.
    unpriced_events_period: int = 0


class UsageService:
    """Limit checks, storage reservations, plans and credits of organizations.

    Every coroutine raises only package errors: ``UnknownOrganizationError``,
    ``InvalidArgumentError``, ``UnknownPlanError``, and ``DatabaseUnavailableError`` when the
    database does not answer, except the two request-path checks, which answer with a
    fail-open/closed decision instead (``USAGE_TOKEN_CHECK_FAIL_OPEN``,
    ``USAGE_STORAGE_FAIL_OPEN``).
    """

    def __init__(self, db: DatabaseManager, settings: UsageServiceSettings | None = None) -> None:
        self.db = db
        self.settings = settings if settings is not None else UsageServiceSettings()
        self.counters: dict[str, int] = {
            "token_fail_open": 0,
            "token_fail_closed": 0,
            "storage_fail_open": 0,
            "storage_fail_closed": 0,
            "token_holds_expired": 0,
        }

    async def check_token_limit(
        self, organization_id: uuid.UUID | str, estimated_tokens: int = 0
    ) -> LimitDecision:
        """May this organization make an LLM call of about ``estimated_tokens``? One PK read."""
        org = as_org_id(organization_id)
        as_count("estimated_tokens", estimated_tokens)
        try:
            async with self.db.driver() as driver:
                row = await driver.fetchrow(_TOKEN_CHECK, org)
        except DATABASE_DOWN_ERRORS as error:
            return self._database_down("token", self.settings.token_check_fail_open, org, error)
        if row is None:
            raise UnknownOrganizationError(f"organization {org} has no usage_limits row")
        return token_decision(row, estimated_tokens)

    async def reserve_tokens(
        self,
        organization_id: uuid.UUID | str,
        estimated_tokens: int,
        *,
        ttl_s: float | None = None,
    ) -> TokenHold:
        """Hold ``estimated_tokens`` for one LLM call if they fit; one atomic round trip.

        Allowed only while used + live holds + estimate <= allowance (soft-limit plans: allowed
        with ``soft_limit_exceeded``); refused, nothing changes. The hold counts until the event
        recorded with its ``reservation_id`` settles it, ``release_tokens`` ends it, or
        ``ttl_s`` (default ``USAGE_HOLD_TTL_S``) passes.
        """
        org = as_org_id(organization_id)
        estimate = as_count("estimated_tokens", estimated_tokens)
        ttl = self.settings.hold_ttl_s if ttl_s is None else as_ttl(ttl_s, MAX_HOLD_TTL_S)
        try:
            async with self.db.driver() as driver:
                row = await driver.fetchrow(RESERVE, org, estimate, ttl)
        except DATABASE_DOWN_ERRORS as error:
            down = self._database_down("token", self.settings.token_check_fail_open, org, error)
            return TokenHold(down.allowed, None, 0, 0, None, None, down.reason, None)
        if row is None:
            raise UnknownOrganizationError(f"organization {org} has no usage_limits row")
        if row["expired_holds"]:
            self.counters["token_holds_expired"] += row["expired_holds"]
            log.info(
                "usage.token_holds_expired",
                extra={"organization_id": str(org), "holds": row["expired_holds"]},
            )
        return hold_from_row(row)

    async def release_tokens(self, reservation_id: uuid.UUID | str | None) -> None:
        """End a hold whose call failed and used nothing. Idempotent; None or unknown: no-op."""
        if reservation_id is None:
            return
        hold_id = as_uuid("reservation_id", reservation_id)
        # Database down: DatabaseUnavailableError; the hold stops counting when its ttl passes.
        async with self.db.unavailable_as_error(), self.db.driver() as driver:
            await driver.fetchval(RELEASE, hold_id)

    async def reserve_storage(
        self, organization_id: uuid.UUID | str, n_bytes: int, *, actor: uuid.UUID | None = None
    ) -> LimitDecision:
        """Add ``n_bytes`` to the organization's storage if it stays within the limit."""
        org, n = as_org_id(organization_id), as_count("n_bytes", n_bytes)
        state = None
        try:
            async with self.db.driver() as driver:
                row = await driver.fetchrow(_RESERVE, org, n, actor)
                if row is None:
                    state = await driver.fetchrow(_STORAGE_STATE, org)
        except DATABASE_DOWN_ERRORS as error:
            return self._database_down("storage", self.settings.storage_fail_open, org, error)
        if row is not None:
            used, limit = row
            return LimitDecision(True, used, limit, None if limit is None else limit - used, "ok")
        if state is None:
            raise UnknownOrganizationError(f"organization {org} has no usage_limits row")
        used, limit = state
        return LimitDecision(False, used, limit, max(limit - used, 0), "storage_limit_exceeded")

    async def release_storage(
        self, organization_id: uuid.UUID | str, n_bytes: int, *, actor: uuid.UUID | None = None
    ) -> None:
        """Subtract ``n_bytes`` from the organization's storage, never below zero."""
        org, n = as_org_id(organization_id), as_count("n_bytes", n_bytes)
        async with self.db.unavailable_as_error(), self.db.driver() as driver:
            row = await driver.fetchrow(_RELEASE, org, n, actor)
        if row is None:
            raise UnknownOrganizationError(f"organization {org} has no usage_limits row")

    def _database_down(
        self, kind: str, fail_open: bool, org: uuid.UUID, error: BaseException
    ) -> LimitDecision:
        outcome = "fail_open" if fail_open else "fail_closed"
        self.counters[f"{kind}_{outcome}"] += 1
        log.warning(
            "usage.limit_check_database_down",
            extra={
                "check": kind,
                "outcome": outcome,
                "organization_id": str(org),
                "error": f"{type(error).__name__}: {error}",
            },
        )
        return LimitDecision(fail_open, 0, None, None, f"database_unavailable_{outcome}")

    async def provision_organization(
        self, organization_id: uuid.UUID | str, plan: str = "free", *, name: str | None = None
    ) -> None:
        """Create or update the organization and its usage_limits row from ``plan``. Idempotent.

        Counters and credits survive a plan change; the period stays unless there is none yet.
        """
        org = as_org_id(organization_id)
        async with self.db.unavailable_as_error(), self.db.session() as session:
            await provision(session, org, plan, name)

    async def grant_credits(
        self,
        organization_id: uuid.UUID | str,
        tokens: int,
        *,
        expires_at: datetime | None = None,
        effective_at: datetime | None = None,
        priority: int = 10,
        reason: str | None = None,
        grant_id: uuid.UUID | str | None = None,
    ) -> CreditGrant:
        """Grant ``tokens`` of credit, live from ``effective_at`` (default: now) until
        ``expires_at`` (default: never); usage beyond the plan burns lower ``priority`` first.

        Idempotent on ``grant_id``: the same id with the same values returns that grant, with
        other values raises ``GrantConflictError``. Audited, with a ledger row.
        """
        org = as_org_id(organization_id)
        as_count("tokens", tokens, minimum=1)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidArgumentError(f"priority: must be an int, got {priority!r}")
        return await _grants.grant(
            self.db,
            org,
            tokens,
            priority=priority,
            effective_at=as_moment("effective_at", effective_at),
            expires_at=as_moment("expires_at", expires_at),
            reason=reason,
            grant_id=None if grant_id is None else as_uuid("grant_id", grant_id),
        )

    async def void_grant(
        self, grant_id: uuid.UUID | str, *, reason: str | None = None
    ) -> CreditGrant:
        """End a grant now; what it still held is voided (its ``remaining`` becomes 0). What it
        already paid for stays paid. Idempotent; an unknown id raises ``UnknownGrantError``."""
        return await _grants.void(self.db, as_uuid("grant_id", grant_id), reason)

    async def list_grants(
        self, organization_id: uuid.UUID | str, *, include_ended: bool = False
    ) -> list[CreditGrant]:
        """The organization's grants in burn order; expired and voided ones with
        ``include_ended``."""
        return await _grants.list_grants(self.db, as_org_id(organization_id), include_ended)

    async def get_usage(self, organization_id: uuid.UUID | str) -> UsageSnapshot:
        """A snapshot of the organization's usage and limits in its current period."""
        org = as_org_id(organization_id)
        async with self.db.unavailable_as_error(), self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(_SNAPSHOT),
                    {"org": org},
                )
            ).first()
        if row is None:
            raise UnknownOrganizationError(f"organization {org} has no usage_limits row")
        m = row._mapping
        return UsageSnapshot(
            organization_id=org,
            plan=m["plan"],
            period_start=m["period_start"],
            period_end=m["period_end"],
            tokens_used_period=m["tokens"],
            token_limit=m["token_limit"],
            credits_remaining=int(m["credits_remaining"]),
            grants_consumed_period=int(m["consumed"]),
            grants_expired_period=int(m["expired"]),
            cost_usd_period=m["cost"],
            storage_used_bytes=m["storage_used_bytes"],
            storage_limit_bytes=m["storage_limit_bytes"],
            counters_updated_at=m["counters_updated_at"],
            unpriced_events_period=m["unpriced"],
        )

    async def query_usage(
        self,
        organization_id: uuid.UUID | str,
        *,
        start: datetime,
        end: datetime,
        window: str | None = None,
        group_by: Sequence[str] = (),
        filters: Mapping[str, Sequence[str | uuid.UUID | None]] | None = None,
        time_zone: str = "UTC",
    ) -> list[UsageRow]:
        """The organization's usage in ``[start, end)`` by ``window`` ("hour", "day", "month"
        in the IANA ``time_zone``; None: one row per group) and ``group_by`` dimensions
        (provider, model, user_id, operation), keeping events whose dimensions are in
        ``filters``. Exact: equal to a GROUP BY over the events, read from the rollup's
        summaries where they hold every event (biz2bricks_core.usage_query)."""
        org = as_org_id(organization_id)
        spec = query_spec(start, end, window, group_by, filters, time_zone)
        return await query_usage(self.db, org, spec)


def token_decision(row: Any, estimated_tokens: int) -> LimitDecision:
    """Decide a token check from a usage_limits row and its live holds (pure: no I/O)."""
    now: datetime = row["now"]
    used = period_reading(int(row["tokens_used_period"]), row["period_end"], now)
    consumed = period_reading(int(row["grants_consumed_period"]), row["period_end"], now)
    reserved = int(row["reserved"])
    updated = row["counters_updated_at"]
    age = None if updated is None else max((now - updated).total_seconds(), 0.0)
    common = {"period_end": row["period_end"], "counters_updated_at": updated, "counter_age_s": age}
    limit = row["token_limit"]
    allowed_tokens = allowance(
        None if limit is None else int(limit), consumed, int(row["grants_live"])
    )
    reason = token_reason(used, reserved, estimated_tokens, allowed_tokens, bool(row["soft_limit"]))
    left = remaining(allowed_tokens, used, reserved)
    allowed = reason != "token_limit_exceeded"
    return LimitDecision(allowed, used, allowed_tokens, left, reason, reserved, **common)
