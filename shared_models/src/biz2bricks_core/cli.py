"""What every command does with a start-up problem: one line that names the fix, exit code 2.

Configuration errors (a variable missing or malformed), an unreachable database and the other
problems a command translates into ``ConfigurationError`` are an operator's to fix, not a bug:
they print as ``<command>: <message>`` with no traceback. ``LOG_LEVEL=DEBUG`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable

from biz2bricks_core.errors import ConfigurationError, DatabaseUnavailableError

__all__ = [
    "EXIT_CONFIGURATION",
    "OPERATOR_ERRORS",
    "command_parser",
    "listen_error",
    "report_operator_error",
    "run_command",
]

EXIT_CONFIGURATION = 2

# Errors whose message already says what to set or start; anything else is a bug and keeps
# its traceback.
OPERATOR_ERRORS: tuple[type[Exception], ...] = (ConfigurationError, DatabaseUnavailableError)


def _debug() -> bool:
    from_env = os.environ.get("LOG_LEVEL", "").strip().upper() == "DEBUG"
    return from_env or logging.getLogger().isEnabledFor(logging.DEBUG)


def report_operator_error(prog: str, error: BaseException) -> int:
    """Print ``prog: message`` to stderr (and the traceback under LOG_LEVEL=DEBUG); return 2."""
    print(f"{prog}: {error}", file=sys.stderr, flush=True)
    if _debug():
        traceback.print_exception(error, file=sys.stderr)
    return EXIT_CONFIGURATION


def command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's parser with the option every command has: ``--log-level``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default $LOG_LEVEL or INFO)",
    )
    return parser


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body; an operator error becomes one message and exit code 2."""
    try:
        return body()
    except OPERATOR_ERRORS as error:
        return report_operator_error(prog, error)


def listen_error(error: OSError, host: str, port: int, variables: str) -> ConfigurationError:
    """The ConfigurationError for a server that cannot listen (port in use, bad address)."""
    return ConfigurationError(
        f"cannot listen on {host}:{port} ({error.strerror or error}): another process may "
        f"be using the port; set {variables} to a free port or address"
    )
