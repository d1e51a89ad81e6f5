"""Watching the worker's long-running tasks: a task that dies is logged and restarted.

A task that keeps dying (``max_failures`` in a row, each within ``healthy_after_s`` of its
start) cannot be helped by restarting: ``failed`` is set and the worker exits non-zero so the
platform restarts the process. Readiness reads ``running`` to see which loops are alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from biz2bricks_consumer.metrics import ConsumerMetrics

log = logging.getLogger(__name__)


class Supervisor:
    """Runs named coroutines, restarting each with backoff when it raises."""

    def __init__(
        self,
        metrics: ConsumerMetrics,
        stopping: asyncio.Event,
        *,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_failures: int = 10,
        healthy_after_s: float = 60.0,
    ) -> None:
        self._metrics = metrics
        self._stopping = stopping
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._max_failures = max_failures
        self._healthy_after_s = healthy_after_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.running: set[str] = set()
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``run()`` under watch; the task ends when it returns or is given up."""
        task = asyncio.create_task(self._watch(name, run), name=name)
        self._tasks[name] = task
        return task

    def alive(self, prefix: str) -> int:
        """How many watched tasks whose name starts with ``prefix`` are running now."""
        return sum(1 for name in self.running if name.startswith(prefix))

    async def wait(self, prefix: str, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for the tasks whose name starts with ``prefix`` to end."""
        tasks = [t for name, t in self._tasks.items() if name.startswith(prefix)]
        if tasks:
            await asyncio.wait(tasks, timeout=max(timeout_s, 0.01))

    async def cancel_all(self, timeout_s: float) -> None:
        """Cancel every watched task and wait (up to ``timeout_s``) for them to end."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=max(timeout_s, 0.01))

    async def _watch(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        backoff_s = self._initial_backoff_s
        while True:
            started = time.monotonic()
            self.running.add(name)
            try:
                await run()
                return
            except Exception as error:
                if time.monotonic() - started >= self._healthy_after_s:
                    failures, backoff_s = 0, self._initial_backoff_s
                failures += 1
                self._metrics.task_restarts.labels(task=name.split("-", 1)[0]).inc()
                log.exception(
                    "consumer.task_died",
                    extra={"task": name, "failures": failures, "error": repr(error)},
                )
                if failures >= self._max_failures:
                    log.error("consumer.task_given_up", extra={"task": name})
                    self.failure = error
                    self.failed.set()
                    return
            finally:
                self.running.discard(name)
            if self._stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff_s)
            if self._stopping.is_set():
                return
            backoff_s = min(backoff_s * 2, self._max_backoff_s)
