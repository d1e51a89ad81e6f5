"""The README's Python blocks run as pasted: every block compiles, and the self-contained ones
(no top-level await on objects the reader brings) run against the real services; the FastAPI
apps are served in process with their lifespan and answer requests."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI

from biz2bricks_core import DatabaseManager
from tests.conftest import PubSubNames
from tests.factories import provisioned_org
from tests.support import ROOT

BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def python_blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def block_starting(text: str) -> str:
    [block] = [b for b in python_blocks() if b.startswith(text)]
    return block


def needs_the_readers_objects(block: str) -> bool:
    """A fragment that awaits the reader's own ``usage`` (shown inside their coroutine)."""
    try:
        ast.parse(block)
    except SyntaxError:
        return True
    return False


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_every_python_block_compiles(index: int) -> None:
    block = python_blocks()[index]
    compile(block, f"README block {index}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_the_application_blocks_are_self_contained() -> None:
    # The blocks of "Using it from the applications" and "Run it by hand" define what they use.
    for start in ("# app.py", "# documents.py", "import sys", "from biz2bricks_core.logs"):
        assert not needs_the_readers_objects(block_starting(start)), start


def load(block: str, tmp_path: Path, name: str) -> ModuleType:
    path = tmp_path / f"{name}.py"
    path.write_text(block)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def serve(app: FastAPI, method: str, url: str, **params: object) -> httpx.Response:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.request(method, url, params=params)  # type: ignore[arg-type]


@pytest.fixture
def app_env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, pubsub_names: PubSubNames, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("PUBSUB_PROJECT_ID", pubsub_names.project_id)
    monkeypatch.setenv("USAGE_TOPIC", pubsub_names.topic)
    monkeypatch.setenv("USAGE_SPOOL_DIR", str(tmp_path / "spool"))


async def test_the_ai_service_block_checks_records_and_answers(
    app_env: None, db: DatabaseManager, tmp_path: Path
) -> None:
    org = await provisioned_org(db, plan="pro")
    app = load(block_starting("# app.py"), tmp_path, "readme_app").app
    response = await serve(app, "POST", f"/summaries/{org}", user_id=str(uuid.uuid4()))
    assert response.status_code == 200, response.text
    assert uuid.UUID(response.json()["event_id"])


async def test_the_backend_block_reserves_and_releases_storage(
    app_env: None, db: DatabaseManager, tmp_path: Path
) -> None:
    org = await provisioned_org(db, plan="pro")
    app = load(block_starting("# documents.py"), tmp_path, "readme_documents").app
    stored = await serve(app, "POST", f"/documents/{org}/d1", size_bytes=1000)
    released = await serve(app, "DELETE", f"/documents/{org}/d1")
    assert (stored.status_code, stored.json()) == (200, {"used_bytes": 1000})
    assert released.json() == {"released_bytes": 1000}


def test_the_record_one_script_publishes(pubsub_names: PubSubNames, tmp_path: Path) -> None:
    script = tmp_path / "record_one.py"
    script.write_text(block_starting("import sys"))
    env = {
        **os.environ,
        "PUBSUB_PROJECT_ID": pubsub_names.project_id,
        "USAGE_TOPIC": pubsub_names.topic,
        "USAGE_SPOOL_DIR": str(tmp_path / "spool"),
    }
    org = uuid.uuid4()
    result = subprocess.run(
        [sys.executable, str(script), str(org)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"for {org}" in result.stdout


def test_the_logging_block_runs(tmp_path: Path) -> None:
    script = tmp_path / "logging_block.py"
    script.write_text(
        block_starting("from biz2bricks_core.logs") + "\nimport logging\n"
        "logging.getLogger('x').warning('x.y: %s', 'why')\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert '"event": "x.y"' in result.stderr
