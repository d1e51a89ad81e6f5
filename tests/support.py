"""Helpers shared by the tests: service resolution, fresh databases, migrations, Pub/Sub names,
web servers run as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
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


@dataclass
class ServerProcess:
    """A web server (uvicorn, gunicorn) a test started as a process, and where it listens."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, as a platform stops it; the exit code (its process group killed, and the
        timeout raised, if it does not stop in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            raise


def launch_server(
    argv: Sequence[str],
    *,
    url: str,
    cwd: Path,
    env: Mapping[str, str],
    log: Path,
    ready_path: str,
    timeout_s: float,
) -> ServerProcess:
    """Start ``argv`` in its own session, its output in ``log``, and wait until ``url`` +
    ``ready_path`` answers 200 (the test fails with the server's output if it dies or does not
    answer in ``timeout_s``)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(process, url, log)
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, server.output()
        try:
            if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"{ready_path} did not answer within {timeout_s:.0f} s:\n{server.output()}")
        time.sleep(0.1)
