"""Start-up truth: a database, role or password that is wrong, a schema not migrated and a
Pub/Sub that does not answer are each one line on stderr naming the fix, exit 2, in seconds,
for every command. Real commands as subprocesses, against the real server and emulator."""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from biz2bricks_core.config import DatabaseConfig
from biz2bricks_core.database_access import access_error
from biz2bricks_devtools.localservices import LocalService
from tests.conftest import PubSubNames
from tests.support import create_database, drop_database
from tests.test_command_errors import (
    ALEMBIC,
    CONSUMER,
    DEAD_DATABASE,
    ROLLUP_RECONCILE,
    ROLLUP_RUN,
    ROLLUP_SERVE,
    SETUP,
    assert_one_message,
    run_command,
    worker_env,
)

ROLLUP_REPRICE = ("-m", "biz2bricks_rollup", "reprice")
ROLLUP_ARCHIVE = ("-m", "biz2bricks_rollup", "archive", "--dry-run")
ROLLUP_STATEMENT = (
    "-m",
    "biz2bricks_rollup",
    "statement",
    "--org",
    str(uuid.uuid4()),
    "--period",
    "2026-01",
)
ROLLUP_VOID = (
    "-m",
    "biz2bricks_rollup",
    "void",
    "--org",
    str(uuid.uuid4()),
    "--request-id",
    "r",
    "--reason",
    "test",
)
ORG = str(uuid.uuid4())
ROLLUP_PROVISION = ("-m", "biz2bricks_rollup", "provision", ORG, "--plan", "free")
ROLLUP_GRANT = ("-m", "biz2bricks_rollup", "grant", ORG, "1000")
ROLLUP_USAGE = ("-m", "biz2bricks_rollup", "usage", "--org", ORG)
ROLLUP_COMMANDS = [
    ROLLUP_RUN,
    ROLLUP_RECONCILE,
    ROLLUP_REPRICE,
    ROLLUP_SERVE,
    ROLLUP_ARCHIVE,
    ROLLUP_VOID,
    ROLLUP_STATEMENT,
]
# The operator's commands share the rollup's start-up path: checked for the commonest mistakes.
OPERATOR_COMMANDS = [ROLLUP_PROVISION, ROLLUP_GRANT, ROLLUP_USAGE]
DATABASE_COMMANDS = [CONSUMER, *ROLLUP_COMMANDS, ALEMBIC]
# Each failure must be named in seconds; the slowest import (the consumer's) takes a few.
QUICK_S = 20.0


def timed(args: tuple[str, ...], **env: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    result = run_command(args, **env)
    return time.monotonic() - started, result


def _url(server: str, *, database: str | None = None, user: str | None = None) -> str:
    url = make_url(server)
    if database is not None:
        url = url.set(database=database)
    if user is not None:
        url = url.set(username=user)
    return url.render_as_string(hide_password=False)


@pytest.fixture
def emulator_env(pubsub_names: PubSubNames) -> dict[str, str]:
    """The emulator and a subscription that exists, so that only the database is wrong."""
    return {k: v for k, v in worker_env("", pubsub_names, PORT="0").items() if k != "DATABASE_URL"}


@pytest.mark.parametrize("command", [*DATABASE_COMMANDS, *OPERATOR_COMMANDS], ids=" ".join)
def test_a_database_that_does_not_exist_is_named_with_createdb(
    command: tuple[str, ...], postgres_server: LocalService, emulator_env: dict[str, str]
) -> None:
    # Given a server that answers, and a database name it does not have
    url = _url(postgres_server.address, database="b2b_no_such_database")
    # When the command starts
    elapsed, result = timed(command, **emulator_env, DATABASE_URL=url)
    # Then one line names the database and the command that creates it, at once
    assert_one_message(result, "b2b_no_such_database", "does not exist", "createdb")
    assert elapsed < QUICK_S, elapsed


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=" ".join)
def test_a_role_that_does_not_exist_is_named_with_the_setting(
    command: tuple[str, ...], postgres_server: LocalService, emulator_env: dict[str, str]
) -> None:
    url = _url(postgres_server.address, user="b2b_no_such_role")
    elapsed, result = timed(command, **emulator_env, DATABASE_URL=url)
    assert_one_message(result, "b2b_no_such_role", "DATABASE_URL", "createuser")
    assert elapsed < QUICK_S, elapsed


class _Refused(Exception):
    """What the driver raises for a refused password (SQLSTATE 28P01)."""

    sqlstate = "28P01"


def test_a_wrong_password_names_the_password_setting() -> None:
    # The test server trusts local connections, so the driver's refusal is built here.
    config = DatabaseConfig(database_url="postgresql://alice:wrong@db.example:5433/usage")
    error = access_error(config, _Refused('password authentication failed for user "alice"'))
    assert error is not None
    message = str(error)
    assert "password authentication failed" in message
    assert "'alice'" in message
    assert "DATABASE_URL" in message
    assert "wrong" not in message  # the password itself is never printed
    assert "\n" not in message


class _RefusesPasswords(socketserver.BaseRequestHandler):
    """A PostgreSQL front that answers every start-up as a server refusing the password does
    (ErrorResponse, SQLSTATE 28P01): the shared test server trusts local connections."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            header = sock.recv(8, socket.MSG_WAITALL)
            if len(header) < 8:
                return
            length, code = struct.unpack("!ii", header)
            sock.recv(length - 8, socket.MSG_WAITALL)
            if code == 80877103:  # SSLRequest: no TLS here, go on in clear
                sock.sendall(b"N")
                continue
            user = b"alice"
            fields = b"".join(
                kind + value + b"\0"
                for kind, value in [
                    (b"S", b"FATAL"),
                    (b"V", b"FATAL"),
                    (b"C", b"28P01"),
                    (b"M", b'password authentication failed for user "' + user + b'"'),
                ]
            )
            body = fields + b"\0"
            sock.sendall(b"E" + struct.pack("!i", len(body) + 4) + body)
            return


@pytest.fixture(scope="module")
def refusing_server() -> Iterator[str]:
    """A database URL whose server refuses the password in it."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _RefusesPasswords)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"postgresql://alice:wrong-secret@127.0.0.1:{server.server_address[1]}/biz2bricks"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=" ".join)
def test_a_refused_password_is_named_with_the_setting(
    command: tuple[str, ...], refusing_server: str, emulator_env: dict[str, str]
) -> None:
    # Given a server that refuses the password in DATABASE_URL
    # When the command starts
    elapsed, result = timed(command, **emulator_env, DATABASE_URL=refusing_server)
    # Then one line says so and names the setting, never the password itself
    assert_one_message(result, "password authentication failed", "'alice'", "DATABASE_URL")
    assert "wrong-secret" not in result.stderr
    assert elapsed < QUICK_S, elapsed


def test_other_errors_are_not_access_errors() -> None:
    assert access_error(DatabaseConfig(), ConnectionRefusedError("down")) is None


@pytest.fixture
def empty_database(postgres_server: LocalService) -> Iterator[str]:
    """A database that exists but was never migrated."""
    url = create_database(postgres_server.address, prefix="b2b_unmigrated")
    yield url
    drop_database(url)


@pytest.mark.parametrize("command", [CONSUMER, *ROLLUP_COMMANDS, *OPERATOR_COMMANDS], ids=" ".join)
def test_a_database_never_migrated_is_named_with_alembic_upgrade_head(
    command: tuple[str, ...], empty_database: str, emulator_env: dict[str, str]
) -> None:
    elapsed, result = timed(command, **emulator_env, DATABASE_URL=empty_database)
    assert_one_message(result, "no schema revision", "alembic upgrade head")
    assert elapsed < QUICK_S, elapsed


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", [CONSUMER, SETUP], ids=" ".join)
def test_a_pubsub_emulator_that_does_not_answer_is_named_in_seconds(
    command: tuple[str, ...], closed_port: int, database_url: str
) -> None:
    # Given PUBSUB_EMULATOR_HOST pointing where no emulator listens
    host = f"127.0.0.1:{closed_port}"
    # When the command starts
    elapsed, result = timed(command, DATABASE_URL=database_url, PUBSUB_EMULATOR_HOST=host, PORT="0")
    # Then one line names the variable, its value and how to start the emulator, in seconds
    assert_one_message(result, f"PUBSUB_EMULATOR_HOST={host}", "emulators pubsub start")
    assert elapsed < QUICK_S, elapsed


def test_exit_when_idle_ends_a_worker_whose_database_is_down(
    pubsub_names: PubSubNames,
) -> None:
    # Given a worker whose subscription exists but whose database never answers
    env = worker_env(DEAD_DATABASE, pubsub_names, PORT="0", CONSUMER_RETRY_MAX_BACKOFF="0.5")
    # When it runs with --exit-when-idle 2
    elapsed, result = timed((*CONSUMER, "--exit-when-idle", "2"), **env)
    # Then it ends by itself, soon after, saying why
    assert result.returncode == 1, result.stderr
    assert "did not answer for 2 s" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < QUICK_S + 10, elapsed


def test_the_worker_logs_one_start_line_and_counts_as_integers(
    database_url: str, pubsub_names: PubSubNames
) -> None:
    # Given a worker with everything it needs
    env = worker_env(database_url, pubsub_names, PORT="0")
    # When it runs until idle
    result = run_command((*CONSUMER, "--exit-when-idle", "1"), **env)
    # Then it said once where it pulls from and answers, and its counters are integers
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    [started] = [e for e in entries if e["event"] == "consumer.started"]
    assert started["subscription"] == pubsub_names.subscription
    assert started["project"] == pubsub_names.project_id
    assert started["health"].startswith("http://127.0.0.1:")
    assert started["batch_max_messages"] > 0
    [stopped] = [e for e in entries if e["event"] == "consumer.stopped"]
    assert isinstance(stopped["pulled"], int)
    assert isinstance(stopped["acked"], int)
