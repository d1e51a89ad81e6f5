"""UsageService: the synchronous limit checks on the AI service's and backend API's request paths.

Each check is one round trip: a primary-key read for tokens, one conditional UPDATE (with its
audit row in the same statement) for storage, one function call for a token hold.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from sqlalchemy import text

from biz2bricks_core._arguments import as_count, as_org_id, as_ttl, as_uuid
from biz2bricks_core._provisioning import provision
from biz2bricks_core._service_methods import CorrectionMethods, GrantMethods
from biz2bricks_core.config import Settings
from biz2bricks_core.database import DATABASE_DOWN_ERRORS, DatabaseManager
from biz2bricks_core.decisions import (
    SNAPSHOT,
    TOKEN_CHECK,
    LimitDecision,
    UsageSnapshot,
    token_decision,
)
from biz2bricks_core.errors import (
    InvalidArgumentError,
    UnknownOrganizationError,
)
from biz2bricks_core.holds import (
    MAX_HOLD_TTL_S,
    RELEASE,
    RESERVE,
    TokenHold,
    hold_from_row,
)
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


class UsageService(GrantMethods, CorrectionMethods):
    """Limit checks, storage reservations, plans and credits of organizations.

    Every coroutine raises only package errors: ``UnknownOrganizationError``,
    ``InvalidArgumentError``, ``UnknownPlanError``, and ``DatabaseUnavailableError`` when the
    database does not answer, except the two request-path checks, which answer with a
    fail-open/closed decision instead (``USAGETOKEN_CHECK_FAIL_OPEN``,
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
                row = await driver.fetchrow(TOKEN_CHECK, org)
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
                "usage.token_holds_expired: %d holds of organization %s expired unsettled"
                " (their events never arrived within the hold ttl)",
                row["expired_holds"],
                org,
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
        answer = "allowed (fail open)" if fail_open else "denied (fail closed)"
        log.warning(
            "usage.limit_check_database_down: %s check of organization %s %s: %s",
            kind,
            org,
            answer,
            self.db.unavailable(error),
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

    async def get_usage(self, organization_id: uuid.UUID | str) -> UsageSnapshot:
        """A snapshot of the organization's usage and limits in its current period."""
        org = as_org_id(organization_id)
        async with self.db.unavailable_as_error(), self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(SNAPSHOT),
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


def _no() -> datetime:
    raise InvalidArgumentError("period_start: a timezone-aware datetime is required")
