"""FastAPI integration of the Biz2Bricks usage pipeline (distribution ``biz2bricks-fastapi``).

::

    from biz2bricks_fastapi import install_error_handlers, usage_lifespan

    app = FastAPI(lifespan=usage_lifespan())
    install_error_handlers(app)
    app.include_router(usage_router(), dependencies=[Depends(your_auth)])

It depends on biz2bricks-core (limit checks) and biz2bricks-producer (recording); neither of
them imports it.
"""

from biz2bricks_fastapi._integration import (
    DatabaseDep,
    LimitExceededError,
    ProducerDep,
    SessionDep,
    UsageDep,
    UsageResources,
    get_database,
    get_producer,
    get_session,
    get_usage_resources,
    get_usage_service,
    install_error_handlers,
    require_allowed,
    usage_lifespan,
)
from biz2bricks_fastapi.usage_api import usage_router

__all__ = [
    "DatabaseDep",
    "LimitExceededError",
    "ProducerDep",
    "SessionDep",
    "UsageDep",
    "UsageResources",
    "get_database",
    "get_producer",
    "get_session",
    "get_usage_resources",
    "get_usage_service",
    "install_error_handlers",
    "require_allowed",
    "usage_lifespan",
    "usage_router",
]
