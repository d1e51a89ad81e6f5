"""Every command turns a configuration or connection problem into one message: exit 2, the
variable or service named, no traceback (unless LOG_LEVEL=DEBUG). Real commands, as subprocesses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from biz2bricks_core.schema import SCHEMA_REVISION
from biz2bricks_devtools.localservices import LocalService
from tests.conftest import PubSubNames
from tests.support import ROOT, create_database, drop_database, migrate

CONSUMER = ("-m", "biz2bricks_consumer")
SETUP = ("-m", "biz2bricks_consumer", "setup")
ROLLUP_RUN = ("-m", "biz2bricks_rollup", "run")
ROLLUP_RECONCILE = ("-m", "biz2bricks_rollup", "reconcile")
ROLLUP_SERVE = ("-m", "biz2bricks_rollup", "serve")
ALEMBIC = ("-m", "alembic", "upgrade", "head")
DEAD_DATABASE = "postgresql://nobody@127.0.0.1:1/none"

# What the session fixtures export, and what would change a command's behaviour here.
_SCRUBBED = (
    "DATABASE_URL",
    "PUBSUB_EMULATOR_HOST",
    "PUBSUB_PROJECT_ID",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "LOG_LEVEL",
    "PORT",
    "USAGE_TOPIC",
    "USAGE_SUBSCRIPTION",
)


def run_command(args: tuple[str, ...], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    environment.update({"PUBSUB_PROJECT_ID": "biz2bricks-test", "ROLLUP_SHARED_TOKEN": "t"})
    environment.update(env)
    return subprocess.run(
        [sys.executable, *args],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def assert_one_message(result: subprocess.CompletedProcess[str], *named: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for name in named:
        assert name in lines[0], lines[0]


@pytest.mark.parametrize(
    "command", [CONSUMER, SETUP, ROLLUP_RUN, ROLLUP_RECONCILE, ROLLUP_SERVE], ids=str
)
def test_a_bad_log_level_is_named(command: tuple[str, ...]) -> None:
    assert_one_message(run_command(command, LOG_LEVEL="abc"), "LOG_LEVEL", "'abc'")


@pytest.mark.parametrize(
    "command", [CONSUMER, ROLLUP_RUN, ROLLUP_RECONCILE, ROLLUP_SERVE, ALEMBIC], ids=str
)
def test_an_unknown_cloud_sql_ip_type_is_refused(command: tuple[str, ...]) -> None:
    result = run_command(command, CLOUD_SQL_IP_TYPE="bogus", DATABASE_URL=DEAD_DATABASE)
    assert_one_message(result, "CLOUD_SQL_IP_TYPE", "PRIVATE")


# The worker is left out on purpose: a long-running worker started before its database waits
# for it (backing off, not ready) and resumes by itself, as it does through any outage.
@pytest.mark.parametrize("command", [ROLLUP_RUN, ROLLUP_RECONCILE, ROLLUP_SERVE, ALEMBIC], ids=str)
def test_a_database_that_is_down_is_named_with_the_fix(command: tuple[str, ...]) -> None:
    result = run_command(command, DATABASE_URL=DEAD_DATABASE)
    assert_one_message(result, "127.0.0.1:1", "DATABASE_URL")


def test_log_level_debug_adds_the_traceback() -> None:
    result = run_command(ROLLUP_RUN, DATABASE_URL=DEAD_DATABASE, LOG_LEVEL="DEBUG")
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr
    assert "Traceback" in result.stderr


def _without_credentials(home: Path) -> dict[str, str]:
    # No emulator, no key file, an empty gcloud configuration, and no metadata server probe.
    return {"HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud"), "NO_GCE_CHECK": "True"}


def test_setup_without_emulator_or_credentials_names_the_emulator_variable(
    tmp_path: Path,
) -> None:
    result = run_command(SETUP, **_without_credentials(tmp_path))
    assert_one_message(result, "PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")


def test_the_worker_without_emulator_or_credentials_names_the_emulator_variable(
    tmp_path: Path, database_url: str
) -> None:
    result = run_command(CONSUMER, DATABASE_URL=database_url, **_without_credentials(tmp_path))
    assert_one_message(result, "PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def worker_env(database_url: str, names: PubSubNames, **extra: str) -> dict[str, str]:
    """What the worker needs to reach its database and the emulator's subscription."""
    return {
        "DATABASE_URL": database_url,
        "PUBSUB_EMULATOR_HOST": os.environ["PUBSUB_EMULATOR_HOST"],
        "PUBSUB_PROJECT_ID": names.project_id,
        "USAGE_TOPIC": names.topic,
        "USAGE_SUBSCRIPTION": names.subscription,
        "CONSUMER_HEALTH_HOST": "127.0.0.1",
        **extra,
    }


def test_the_worker_names_port_when_its_health_port_is_in_use(
    busy_port: int, database_url: str, pubsub_names: PubSubNames
) -> None:
    result = run_command(CONSUMER, **worker_env(database_url, pubsub_names, PORT=str(busy_port)))
    assert_one_message(result, "PORT", str(busy_port))


def test_rollup_serve_names_port_when_its_port_is_in_use(busy_port: int, database_url: str) -> None:
    result = run_command(
        ROLLUP_SERVE, DATABASE_URL=database_url, ROLLUP_HOST="127.0.0.1", PORT=str(busy_port)
    )
    assert_one_message(result, "PORT", str(busy_port))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("-m", "biz2bricks_consumer", "setup", "--help"), "biz2bricks-consumer setup"),
        (("-m", "biz2bricks_consumer", "run", "--help"), "--exit-when-idle"),
        (("-m", "biz2bricks_rollup", "--help"), "reconcile"),
        (("-m", "biz2bricks_rollup", "reconcile", "--help"), "--fix"),
    ],
    ids=str,
)
def test_help_is_the_commands_own_and_plain_text(argv: tuple[str, ...], expected: str) -> None:
    result = run_command(argv)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert "``" not in result.stdout
    if "setup" in argv:
        assert "{run,setup}" not in result.stdout  # not the top-level help


def test_the_worker_refuses_a_database_that_was_not_migrated(
    postgres_server: LocalService, pubsub_names: PubSubNames
) -> None:
    # Given a reachable database one migration behind this release
    url = create_database(postgres_server.address, prefix="b2b_old_schema")
    try:
        migrate(url, "0005")
        # When the worker starts on it
        result = run_command(CONSUMER, **worker_env(url, pubsub_names, PORT="0"))
    finally:
        drop_database(url)
    # Then it exits at once with the revisions and the command that fixes it
    assert_one_message(result, "revision 0005", SCHEMA_REVISION, "alembic upgrade head")
