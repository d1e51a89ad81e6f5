"""biz2bricks-devtools starts local services and leaves nothing behind in the temp directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, require_services

SCRIPT = """
from biz2bricks_devtools.localservices import start_postgres, start_pubsub_emulator, find_free_port
import asyncio, asyncpg
postgres = start_postgres(env_vars=())
async def ping():
    conn = await asyncpg.connect(postgres.address)
    await conn.close()
asyncio.run(ping())
postgres.stop()
emulator = start_pubsub_emulator("leftovers", port=find_free_port())
emulator.stop()
print("started and stopped", postgres.source, emulator.source)
"""


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A short-pathed private temp directory (initdb and sockets dislike pytest's long paths)."""
    path = Path(tempfile.mkdtemp(prefix="b2b-tmpdir-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_services_started_for_tests_and_the_demo_leave_no_files(private_tmp: Path) -> None:
    # Given a private temp directory and no service addresses in the environment
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("XDG_RUNTIME_DIR", "PUBSUB_EMULATOR_HOST", "DATABASE_URL")
    }
    # When a process starts an embedded PostgreSQL and the SDK emulator, stops them and exits
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**env, "TMPDIR": str(private_tmp)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    if result.returncode != 0 and not require_services() and "ServiceUnavailable" in result.stderr:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    # Then nothing it made is left in the temp directory (no emulator log, no runtime dir)
    assert sorted(p.name for p in private_tmp.iterdir()) == []
