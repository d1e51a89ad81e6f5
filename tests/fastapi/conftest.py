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
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from biz2bricks_devtools.localservices import find_free_port
from biz2bricks_producer import ProducerSettings, UsageProducer
from tests.conftest import PubSubNames
from tests.producer.test_producer import pull_all

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    """A server process and where it listens."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, as a platform does; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


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
        log = tmp_path / f"{server}-{port}.log"
        environment = {
            **os.environ,
            "PUBSUB_PROJECT_ID": pubsub_names.project_id,
            "USAGE_TOPIC": pubsub_names.topic,
            "USAGE_SPOOL_DIR": str(spool_dir),
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
            **env,
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", server, *argv],
                cwd=ROOT,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        running = Server(process, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, running.output()
            try:
                if httpx.get(f"{running.url}/healthz", timeout=2).status_code == 200:
                    return running
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not ready:\n{running.output()}"
            time.sleep(0.2)

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
