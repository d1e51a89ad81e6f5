"""Real servers (gunicorn, uvicorn) running the test apps, stopped at teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from biz2bricks_devtools.localservices import find_free_port
from biz2bricks_producer import ProducerSettings, UsageProducer
from tests.conftest import PubSubNames
from tests.producer.test_producer import pull_all
from tests.support import ROOT, ServerProcess, launch_server

# A server the fixture started (the name the tests import).
Server = ServerProcess


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def serve(pubsub_names: PubSubNames, spool_dir: Path, tmp_path: Path) -> Iterator[object]:
    """Start ``python -m <server> ...`` on a free port with the test's topic; killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(server: str, app: str, *args: str, **env: str) -> Server:
        port = find_free_port()
        if server == "gunicorn":
            argv = [app, "--bind", f"127.0.0.1:{port}", *args]
        else:
            argv = [app, "--host", "127.0.0.1", "--port", str(port), *args]
        environment = {
            **os.environ,
            "PUBSUB_PROJECT_ID": pubsub_names.project_id,
            "USAGE_TOPIC": pubsub_names.topic,
            "USAGE_SPOOL_DIR": str(spool_dir),
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
            **env,
        }
        running = launch_server(
            [sys.executable, "-m", server, *argv],
            url=f"http://127.0.0.1:{port}",
            cwd=ROOT,
            env=environment,
            log=tmp_path / f"{server}-{port}.log",
            ready_path="/healthz",
            timeout_s=90,
        )
        started.append(running.process)
        return running

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def burst(url: str, organization_id: uuid.UUID, n: int) -> tuple[set[str], set[int]]:
    """POST ``n`` calls from 8 threads; the event ids of the 200 responses and the pids seen."""

    def one(client: httpx.Client) -> httpx.Response:
        return client.post(f"{url}/calls/{organization_id}", timeout=30)

    with httpx.Client() as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: one(client), range(n)))
    ok = [r.json() for r in responses if r.status_code == 200]
    assert len(ok) == n, [r.text for r in responses if r.status_code != 200][:3]
    return {body["event_id"] for body in ok}, {body["pid"] for body in ok}


def replay_then_pull(names: PubSubNames, spool_dir: Path, expected: int) -> list[str]:
    """Replay whatever the servers left in the spool (a new process would), then pull."""
    settings = ProducerSettings(project_id=names.project_id, topic=names.topic, spool_dir=spool_dir)
    with UsageProducer(settings) as producer:
        deadline = time.monotonic() + 60
        while any(spool_dir.glob("slot-*/*.spool")) and time.monotonic() < deadline:
            time.sleep(0.2)  # this slot and the orphaned ones
        assert producer.flush(timeout=60), producer.stats()

    messages = pull_all(names.subscription_path, expected)
    # Wait a little for anything published twice.
    messages += pull_all(names.subscription_path, expected + 1, timeout_s=3)
    return [json.loads(data)["event_id"] for data, _ in messages]
