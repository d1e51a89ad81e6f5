"""biz2bricks-core: settings, database access, models, the event contract, pricing and limits.

The event contract, settings, pricing and periods import without SQLAlchemy, so the producer
library can depend on this package; the database names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from biz2bricks_core.config import DatabaseConfig
from biz2bricks_core.credits import CreditGrant
from biz2bricks_core.errors import (
    Biz2BricksError,
    ConfigurationError,
    DatabaseUnavailableError,
    GrantConflictError,
    InvalidArgumentError,
    InvalidEventError,
    PermanentError,
    TransientError,
    UnknownEventError,
    UnknownGrantError,
    UnknownOrganizationError,
    UnknownPlanError,
)
from biz2bricks_core.event_ids import new_event_id
from biz2bricks_core.events import UsageEvent, decode_event, encode_event
from biz2bricks_core.holds import TokenHold
from biz2bricks_core.pricing import PriceBook, TokenPrice, event_cost
from biz2bricks_core.usage_windows import UsageRow

if TYPE_CHECKING:
    from biz2bricks_core.corrections import VoidResult
    from biz2bricks_core.database import DatabaseManager, get_database_manager
    from biz2bricks_core.statements import Statement
    from biz2bricks_core.usage_service import (
        LimitDecision,
        UsageService,
        UsageServiceSettings,
        UsageSnapshot,
    )

__all__ = [
    "Biz2BricksError",
    "ConfigurationError",
    "CreditGrant",
    "DatabaseConfig",
    "DatabaseManager",
    "DatabaseUnavailableError",
    "GrantConflictError",
    "InvalidArgumentError",
    "InvalidEventError",
    "LimitDecision",
    "PermanentError",
    "PriceBook",
    "Statement",
    "TokenHold",
    "TokenPrice",
    "TransientError",
    "UnknownEventError",
    "UnknownGrantError",
    "UnknownOrganizationError",
    "UnknownPlanError",
    "UsageEvent",
    "UsageRow",
    "UsageService",
    "UsageServiceSettings",
    "UsageSnapshot",
    "VoidResult",
    "decode_event",
    "encode_event",
    "event_cost",
    "get_database_manager",
    "new_event_id",
]

_LAZY = {
    "DatabaseManager": "biz2bricks_core.database",
    "get_database_manager": "biz2bricks_core.database",
    "LimitDecision": "biz2bricks_core.usage_service",
    "UsageService": "biz2bricks_core.usage_service",
    "UsageServiceSettings": "biz2bricks_core.usage_service",
    "UsageSnapshot": "biz2bricks_core.usage_service",
    "VoidResult": "biz2bricks_core.corrections",
    "Statement": "biz2bricks_core.statements",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'biz2bricks_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
