"""Moved: the FastAPI integration is the ``biz2bricks-fastapi`` distribution.

It depends on the producer, which is built on this library, so it cannot live here. Import
``from biz2bricks_fastapi import usage_lifespan, install_error_handlers, ...`` instead.
"""

raise ImportError(
    "biz2bricks_core.fastapi moved to biz2bricks_fastapi: install biz2bricks-fastapi and "
    "import from biz2bricks_fastapi (usage_lifespan, install_error_handlers, UsageDep, ...)"
)
