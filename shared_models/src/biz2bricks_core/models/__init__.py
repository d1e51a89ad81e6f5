"""SQLAlchemy 2.0 models of every table of the usage pipeline and the original library, one
module per concern; every name is importable from here."""

from __future__ import annotations

from biz2bricks_core.models._base import Base
from biz2bricks_core.models.billing import (
    CreditGrantModel,
    CreditLedgerModel,
    UsageCorrectionModel,
    UsageStatementModel,
)
from biz2bricks_core.models.plans import ModelPricingModel, SubscriptionPlanModel
from biz2bricks_core.models.tenancy import (
    AuditLogModel,
    DocumentModel,
    FolderModel,
    OrganizationModel,
    UserModel,
)
from biz2bricks_core.models.usage import (
    USAGE_LIMITS_FILLFACTOR,
    TokenHoldModel,
    UsageAlertModel,
    UsageDailyBreakdownModel,
    UsageDailySummaryModel,
    UsageEventArchiveModel,
    UsageEventModel,
    UsageEventRejectModel,
    UsageLimitsModel,
    UsageRollupDayModel,
)

__all__ = [
    "USAGE_LIMITS_FILLFACTOR",
    "AuditLogModel",
    "Base",
    "CreditGrantModel",
    "CreditLedgerModel",
    "DocumentModel",
    "FolderModel",
    "ModelPricingModel",
    "OrganizationModel",
    "SubscriptionPlanModel",
    "TokenHoldModel",
    "UsageAlertModel",
    "UsageCorrectionModel",
    "UsageDailyBreakdownModel",
    "UsageDailySummaryModel",
    "UsageEventArchiveModel",
    "UsageEventModel",
    "UsageEventRejectModel",
    "UsageLimitsModel",
    "UsageRollupDayModel",
    "UsageStatementModel",
    "UserModel",
]
