"""The command's entry point and its one handler of SIGTERM and SIGINT, installed first.

Importing the worker (grpc, SQLAlchemy, pydantic) takes one to several seconds; a platform that
stops a replica during that time must see a clean exit, not a death by signal. This module
imports nothing heavy before the handler is in place. The handler follows arq's ``handle_sig``
and Dramatiq's ``termhandler``: before a worker runs, a signal is a clean exit (nothing was
pulled); once one runs, the first signal stops it gracefully and a second exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

# The exit code of a second signal: the batch in hand was not acked, so nothing is lost.
EXIT_NOW_CODE = 1


class StopSignals:
    """SIGTERM and SIGINT of the process: exit 0 before start, then stop, then exit now."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: Callable[[], None] | None = None
        self.received = 0

    def install(self) -> None:
        """Make this the process's handler of SIGTERM and SIGINT (main thread only)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def attach(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
        """From now on, a first signal calls ``stop`` on ``loop``."""
        self._loop, self._stop = loop, stop

    def _handle(self, signum: int, frame: object) -> None:
        if self._loop is None or self._stop is None:
            raise SystemExit(0)  # nothing was pulled yet: a stop request is a clean exit
        self.received += 1
        if self.received > 1:
            logging.getLogger("biz2bricks_consumer").error(
                "consumer.second_signal_exit_now", extra={"signal": signum}
            )
            os._exit(EXIT_NOW_CODE)
        self._loop.call_soon_threadsafe(self._stop)


def main() -> int:
    """Install the stop signals, then run ``biz2bricks-consumer`` (console script, ``-m``)."""
    signals = StopSignals()
    signals.install()
    from biz2bricks_consumer.command import main as run

    return run(signals=signals)
