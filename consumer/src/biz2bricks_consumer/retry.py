"""The database retry policy: exponential backoff with jitter, a budget, and the stop grace.

While a call is failing the database counts as down (``database_ok`` cleared): pullers wait
on it so that nothing more is taken while nothing can be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from biz2bricks_consumer.errors import BatchReleased, is_retryable_db_error
from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_consumer.settings import ConsumerSettings

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class DatabaseRetry:
    """Decides how long to wait before the next attempt, and when to give up."""

    def __init__(self, settings: ConsumerSettings, metrics: ConsumerMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.database_ok = asyncio.Event()
        self.database_ok.set()
        self.down_since: float | None = None  # monotonic time of the first failure in a row
        self.stop_deadline: float | None = None  # set by Worker.stop: grace ends then
        self._stop_signal = asyncio.Event()

    def begin_stop(self, deadline: float | None = None) -> None:
        """From now on, give up at ``deadline`` (now if None); wakes a backoff in progress."""
        if deadline is not None or self.stop_deadline is None:
            self.stop_deadline = deadline if deadline is not None else time.monotonic()
        self._stop_signal.set()

    def remaining_grace_s(self) -> float | None:
        """Seconds left before the stop deadline, or None while not stopping."""
        if self.stop_deadline is None:
            return None
        return max(self.stop_deadline - time.monotonic(), 0.0)

    def failed(self, attempt: int, error: BaseException) -> None:
        """Record a retryable failure: the database counts as down until a call succeeds."""
        if self.down_since is None:
            self.down_since = time.monotonic()
        self.database_ok.clear()
        self._metrics.database_up.set(0)
        self._metrics.commit_retries.inc()
        log.warning(
            "consumer.database_unavailable",
            extra={"attempt": attempt, "error": f"{type(error).__name__}: {error}"},
        )

    def succeeded(self) -> None:
        """A call went through: pulling may resume."""
        self.down_since = None
        if not self.database_ok.is_set():
            log.info("consumer.database_back")
            self._metrics.database_up.set(1)
            self.database_ok.set()

    async def backoff(self, attempt: int, started: float) -> bool:
        """Sleep before attempt ``attempt + 1``; False when the budget or the grace is spent."""
        s = self._settings
        if time.monotonic() - started >= s.commit_retry_max_s:
            return False
        delay = min(s.retry_initial_s * 2 ** (attempt - 1), s.retry_max_backoff_s)
        delay += random.uniform(0, s.retry_initial_s)
        end = time.monotonic() + delay
        while (now := time.monotonic()) < end:
            grace = self.remaining_grace_s()
            if grace is not None:  # stopping: keep trying only until the grace ends
                if grace <= 0:
                    return False
                await asyncio.sleep(min(end, now + grace) - now)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_signal.wait(), end - now)
        grace = self.remaining_grace_s()
        return grace is None or grace > 0

    async def call(self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``func`` until it succeeds; BatchReleased once the budget or grace is spent.

        Only retryable database errors are retried; anything else propagates at once.
        """
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                result = await func(*args, **kwargs)
            except Exception as error:
                if not is_retryable_db_error(error):
                    raise
                self.failed(attempt, error)
                if not await self.backoff(attempt, started):
                    raise BatchReleased("database unreachable past the retry budget") from error
                continue
            self.succeeded()
            return result
