"""UsageService's credit and correction methods: thin, argument-checking entries to
biz2bricks_core._grants, .corrections, .amendments and .statements (mixed into UsageService,
which provides ``db``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from biz2bricks_core import _grants
from biz2bricks_core._arguments import as_count, as_moment, as_org_id, as_uuid
from biz2bricks_core.amendments import amend_event
from biz2bricks_core.corrections import VoidResult, void_events
from biz2bricks_core.credits import CreditGrant
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import InvalidArgumentError
from biz2bricks_core.statements import Statement, statement_of

__all__ = ["CorrectionMethods", "GrantMethods"]


class GrantMethods:
    """Credit grants of an organization (see README "Credits")."""

    db: DatabaseManager

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


class CorrectionMethods:
    """Corrections of recorded usage, and period statements (README: Corrections)."""

    db: DatabaseManager

    async def void_events(
        self,
        organization_id: uuid.UUID | str,
        *,
        event_ids: Sequence[uuid.UUID | str] | None = None,
        request_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        reason: str,
        actor: str | None = None,
    ) -> VoidResult:
        """Void the organization's events named by ``event_ids``, a ``request_id``, or a range
        ``[start, end)`` of ``occurred_at``: they stay stored and count nowhere; the counters of
        the period they counted in give back their tokens, cost and what they consumed of
        grants, in this transaction (biz2bricks_core.corrections). Idempotent."""
        return await void_events(
            self.db,
            as_org_id(organization_id),
            event_ids=None if event_ids is None else [as_uuid("event_ids", e) for e in event_ids],
            request_id=request_id,
            start=as_moment("start", start),
            end=as_moment("end", end),
            reason=reason,
            actor=actor,
        )

    async def amend_event(
        self,
        event_id: uuid.UUID | str,
        *,
        reason: str,
        actor: str | None = None,
        **changes: Any,
    ) -> uuid.UUID:
        """Correct a stored event: the original is voided and a new event (new id, pointing
        to the original, priced and counted as the consumer does) replaces it, in one
        transaction. ``changes``: any of ``corrections.AMENDABLE``. Returns the new id."""
        return await amend_event(
            self.db, as_uuid("event_id", event_id), reason=reason, actor=actor, changes=changes
        )

    async def get_statement(
        self, organization_id: uuid.UUID | str, period_start: datetime
    ) -> Statement:
        """The organization's statement of the period that begins at ``period_start``: closed
        (as it was sent, never changed) or open (computed now). See
        biz2bricks_core.statements."""
        return await statement_of(
            self.db, as_org_id(organization_id), as_moment("period_start", period_start) or _no()
        )


def _no() -> datetime:
    raise InvalidArgumentError("period_start: a timezone-aware datetime is required")
