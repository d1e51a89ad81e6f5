"""The command's one stop-signal handler: the first signal stops gracefully, a second at once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from biz2bricks_devtools.localservices import find_free_port
from tests.consumer.test_resilience import alive
from tests.consumer.test_worker import wait_until

LONG_GRACE_S = 60.0


@pytest.mark.fault
async def test_a_second_sigterm_exits_at_once_while_the_first_waits_for_the_grace(
    worker_process: Callable[..., Any],
) -> None:
    # Given a worker retrying an unreachable database, with a long shutdown grace
    port = find_free_port()
    proc = worker_process(
        "--health-port",
        str(port),
        DATABASE_URL=f"postgresql://nobody@127.0.0.1:{find_free_port()}/none",
        CONSUMER_SHUTDOWN_GRACE=str(LONG_GRACE_S),
    )
    await wait_until(lambda: alive(port), timeout_s=90)
    # When a first SIGTERM arrives, it keeps finishing within the grace
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(1.0)
    assert proc.poll() is None
    # And when a second one arrives, it exits at once
    sent_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    assert time.monotonic() - sent_at < 5
    assert proc.returncode == 1, stderr[-3000:]
    assert "consumer.stopping" in stderr
    assert "consumer.second_signal_exit_now" in stderr
