"""Console-script entry point: SIGTERM means "exit 0" from the process's first instruction.

Importing the worker (grpc, SQLAlchemy, pydantic) takes one to several seconds; a platform that
stops a replica during that time must see a clean exit, not a death by signal. This module
imports nothing heavy before the handler is in place; ``__main__.main`` replaces it with the
worker's own handlers once there is something to finish.
"""

from __future__ import annotations

import signal


def exit_before_start(signum: int, frame: object) -> None:
    """Nothing was pulled yet: a stop request is a clean exit."""
    raise SystemExit(0)


def main() -> int:
    """Install the start-up SIGTERM handler, then run ``biz2bricks-consumer``."""
    signal.signal(signal.SIGTERM, exit_before_start)
    from biz2bricks_consumer.__main__ import main as run

    return run()
