"""Helpers shared by the tests: service resolution, fresh databases, migrations, Pub/Sub names."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from alembic.config import Config
from sqlalchemy.engine import URL

from biz2bricks_devtools import localservices
from biz2bricks_devtools.localservices import ServiceUnavailableError

ROOT = Path(__file__).resolve().parent.parent


def require_services() -> bool:
    """Under REQUIRE_SERVICES=1 (CI) a missing service fails the run instead of skipping."""
    return os.environ.get("REQUIRE_SERVICES", "") not in ("", "0", "false")


def service_missing(error: ServiceUnavailableError) -> None:
    """Fail (CI) or skip (a laptop without the service) with the service's own hint."""
    if require_services():
        pytest.fail(f"REQUIRE_SERVICES=1 and {error}", pytrace=False)
    pytest.skip(str(error))


def libpq_url(url: URL) -> str:
    """A URL asyncpg.connect understands (no +asyncpg driver suffix)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(server_url: str, prefix: str = "b2b_test") -> str:
    """Create an empty database with a unique name on the server; return its asyncpg URL."""
    return localservices.create_database(server_url, prefix)


def drop_database(url: str) -> None:
    """Drop a database made by create_database."""
    localservices.drop_database(url)


def alembic_config(url: str) -> Config:
    """An Alembic config for the repository's migrations aimed at ``url``."""
    config: Config = localservices.alembic_config(url, ROOT / "alembic.ini")
    return config


def migrate(url: str, revision: str = "head", *, down: bool = False) -> None:
    """Run Alembic upgrade (or downgrade) against ``url``, through the project's env.py."""
    localservices.migrate(url, ROOT / "alembic.ini", revision, down=down)


def unique_name(prefix: str) -> str:
    """A Pub/Sub-safe unique resource name."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
