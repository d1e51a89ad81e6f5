"""Creating and re-planning an organization's usage_limits row (low rate: ORM-level code)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from biz2bricks_core.errors import UnknownPlanError
from biz2bricks_core.models import (
    AuditLogModel,
    OrganizationModel,
    SubscriptionPlanModel,
    UsageLimitsModel,
)
from biz2bricks_core.periods import period_bounds


async def provision(
    session: AsyncSession, org: uuid.UUID, plan_name: str, name: str | None
) -> None:
    """Upsert the organization and its limits from the plan; keep counters, credits, period."""
    plan = await session.get(SubscriptionPlanModel, plan_name)
    if plan is None or not plan.is_active:
        known = (await session.scalars(select(SubscriptionPlanModel.name))).all()
        raise UnknownPlanError(f"plan {plan_name!r} does not exist (known: {', '.join(known)})")
    await session.execute(
        insert(OrganizationModel)
        .values(id=org, name=name or str(org))
        .on_conflict_do_nothing(index_elements=["id"])
    )
    now = (await session.execute(select(func.now()))).scalar_one()
    start, end = period_bounds(now, plan.period_unit)
    limits = {
        "plan": plan.name,
        "token_limit": plan.token_limit,
        "storage_limit_bytes": plan.storage_limit_bytes,
        "soft_limit": plan.soft_limit,
        "period_unit": plan.period_unit,
    }
    statement = insert(UsageLimitsModel).values(
        organization_id=org, period_start=start, period_end=end, **limits
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["organization_id"], set_={**limits, "updated_at": func.now()}
        )
    )
    session.add(
        AuditLogModel(
            organization_id=org,
            action="plan.provision",
            entity_type="usage_limits",
            entity_id=str(org),
            details={"plan": plan.name},
        )
    )
