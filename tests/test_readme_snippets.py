"""The README's Python blocks run as pasted, against the real services.

Programs (the FastAPI apps, ``record_one.py``, the logging set-up) run as the README says: the
apps under uvicorn as subprocesses answering real HTTP requests, the script as a process.
Fragments (first line ``# inside your coroutine, given ...``) run inside a coroutine given a
real ``UsageService`` over the test database, a real producer and a provisioned organization,
and each test asserts what the fragment did to the database or the topic.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import signal
import subprocess
import symtable
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.cloud import pubsub_v1
from sqlalchemy import text
from sqlalchemy.engine import make_url

from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_devtools.localservices import LocalService, find_free_port
from biz2bricks_fastapi import LimitExceededError
from biz2bricks_producer import ProducerSettings, UsageProducer
from tests.conftest import PROJECT_ID, PubSubNames
from tests.factories import counters, make_event, provisioned_org, write_events
from tests.producer.test_producer import pull_all
from tests.support import ROOT, ServerProcess, launch_server, unique_name

BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
FRAGMENT = "# inside your coroutine, given "
# What a fragment may use without defining it, as the README's "Outside FastAPI" says.
GIVENS = {"usage", "producer", "org_id"}
PROGRAMS = ("# app.py", "# documents.py", "import sys", "from biz2bricks_core.logs")
ADMIN = {"Authorization": "Bearer admin-token"}  # the stand-in auth of the README's app.py


def python_blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def block_starting(text: str) -> str:
    [block] = [b for b in python_blocks() if b.startswith(text)]
    return block


def fragments() -> list[str]:
    return [b for b in python_blocks() if b.startswith(FRAGMENT)]


def fragment_with(call: str) -> str:
    [block] = [b for b in fragments() if call in b]
    return block


def as_coroutine(block: str) -> str:
    """The fragment as the body of the reader's coroutine, returning its variables."""
    return f"async def fragment():\n{textwrap.indent(block, '    ')}\n    return locals()\n"


def free_names(block: str) -> set[str]:
    """Names the fragment uses without defining them (builtins aside)."""
    [function] = symtable.symtable(as_coroutine(block), "README", "exec").get_children()
    tables = [function]
    names: set[str] = set()
    while tables:
        table = tables.pop()
        names |= {s.get_name() for s in table.get_symbols() if s.is_global() and s.is_referenced()}
        tables.extend(table.get_children())
    return names - set(dir(builtins))


async def run_fragment(block: str, **givens: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = dict(givens)
    exec(compile(as_coroutine(block), "README fragment", "exec"), namespace)
    result: dict[str, Any] = await namespace["fragment"]()
    return result


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_every_python_block_is_a_program_or_a_fragment_naming_what_it_is_given(
    index: int,
) -> None:
    block = python_blocks()[index]
    if block.startswith(PROGRAMS):
        ast.parse(block)  # a program: no top-level await, runs as a file
        return
    assert block.startswith(FRAGMENT), f"README block {index} is neither:\n{block}"
    used = free_names(block)
    first_line = block.splitlines()[0]
    assert used <= GIVENS, f"README block {index} uses undefined {sorted(used - GIVENS)}"
    for name in used:
        assert re.search(rf"\b{name}\b", first_line), (name, first_line)


# Fragments, each inside a coroutine with the real service, producer and organization.


@pytest.fixture
async def org_id(db: DatabaseManager) -> uuid.UUID:
    return await provisioned_org(db, plan="pro")


@pytest.fixture
def producer(pubsub_names: PubSubNames, tmp_path: Path) -> Iterator[UsageProducer]:
    settings = ProducerSettings(
        project_id=pubsub_names.project_id, topic=pubsub_names.topic, spool_dir=tmp_path / "spool"
    )
    with UsageProducer(settings) as made:
        yield made


async def test_the_query_fragment_reads_the_days_usage_by_model(
    db: DatabaseManager, org_id: uuid.UUID
) -> None:
    # Given two calls of the organization this month, one of them a summary
    await write_events(
        db,
        [
            make_event(org_id, operation="summarize", input_tokens=900, output_tokens=100),
            make_event(org_id, operation="extract", model="gpt-4o-mini"),
        ],
    )
    # When the fragment runs
    done = await run_fragment(fragment_with("query_usage"), usage=UsageService(db), org_id=org_id)
    # Then it read the summary's tokens, by day and model
    [row] = done["rows"]
    assert row.groups == {"model": "gpt-4o"}
    assert (row.requests, row.total_tokens) == (1, 1000)


async def test_the_credits_fragment_grants_lists_and_voids(
    db: DatabaseManager, org_id: uuid.UUID
) -> None:
    usage = UsageService(db)
    done = await run_fragment(fragment_with("grant_credits"), usage=usage, org_id=org_id)
    grant = done["grant"]
    assert grant.tokens == 1_000_000
    assert grant.id not in {g.id for g in await usage.list_grants(org_id)}
    assert grant.id in {g.id for g in await usage.list_grants(org_id, include_ended=True)}


async def test_the_hold_fragment_holds_then_records_an_event_that_settles_it(
    db: DatabaseManager, org_id: uuid.UUID, producer: UsageProducer, pubsub_names: PubSubNames
) -> None:
    usage = UsageService(db)
    done = await run_fragment(
        fragment_with("reserve_tokens"), usage=usage, producer=producer, org_id=org_id
    )
    hold = done["hold"]
    assert hold.allowed
    assert (await usage.check_token_limit(org_id)).reserved == done["estimate"]
    assert producer.flush(timeout=30)
    [(data, _)] = pull_all(pubsub_names.subscription_path, 1)
    assert json.loads(data)["reservation_id"] == str(hold.reservation_id)


async def test_the_hold_fragment_stops_a_call_the_allowance_cannot_cover(
    db: DatabaseManager, producer: UsageProducer
) -> None:
    # Given a free organization whose allowance is almost all held
    usage = UsageService(db)
    org = await provisioned_org(db, plan="free")
    assert (await usage.reserve_tokens(org, 99_900)).allowed
    # When the fragment runs, Then it raises before the call, and holds nothing more
    with pytest.raises(LimitExceededError) as denied:
        await run_fragment(
            fragment_with("reserve_tokens"), usage=usage, producer=producer, org_id=org
        )
    assert denied.value.decision.reason == "token_limit_exceeded"
    assert (await usage.check_token_limit(org)).reserved == 99_900
    assert producer.stats()["accepted"] == 0


async def test_the_void_fragment_gives_the_tokens_back(
    db: DatabaseManager, org_id: uuid.UUID
) -> None:
    # Given a call recorded twice, the second time as request req-42
    event = make_event(org_id, request_id="req-42", input_tokens=500, output_tokens=0)
    await write_events(db, [event])
    assert (await counters(db, org_id))["tokens_used_period"] == 500
    # When the fragment runs
    await run_fragment(fragment_with("void_events"), usage=UsageService(db), org_id=org_id)
    # Then the event is voided, not deleted, and the period counts it no more
    async with db.engine.connect() as conn:
        voided_at = (
            await conn.execute(
                text("SELECT voided_at FROM usage_events WHERE event_id = :e"),
                {"e": event.event_id},
            )
        ).scalar_one()
    assert voided_at is not None
    assert (await counters(db, org_id))["tokens_used_period"] == 0


# Programs: the FastAPI apps under uvicorn (one server per app for the module), the script.


# ``uvicorn module:app`` on a free port, as the README runs the app.
Uvicorn = ServerProcess


def start_uvicorn(block: str, name: str, directory: Path, **env: str) -> Uvicorn:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(block)
    port = find_free_port()
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment.update(env, PYTHONWARNINGS="ignore::DeprecationWarning")
    return launch_server(
        [sys.executable, "-m", "uvicorn", f"{name}:app", "--port", str(port)],
        url=f"http://127.0.0.1:{port}",
        cwd=directory,
        env=environment,
        log=directory / f"{name}-{port}.log",
        ready_path="/openapi.json",
        timeout_s=60,
    )


@pytest.fixture(scope="module")
def app_topic(pubsub_emulator: LocalService) -> Iterator[PubSubNames]:
    """A topic and subscription for the app server the module shares."""
    names = PubSubNames(PROJECT_ID, unique_name("readme"), unique_name("readme-sub"))
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    publisher.create_topic(name=names.topic_path)
    subscriber.create_subscription(name=names.subscription_path, topic=names.topic_path)
    yield names
    subscriber.delete_subscription(subscription=names.subscription_path)
    publisher.delete_topic(topic=names.topic_path)
    subscriber.close()
    publisher.transport.close()


def app_env(database_url: str, names: PubSubNames, spool: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "PUBSUB_PROJECT_ID": names.project_id,
        "USAGE_TOPIC": names.topic,
        "USAGE_SPOOL_DIR": str(spool),
    }


def serving(block: str, name: str, directory: Path, **env: str) -> Iterator[Uvicorn]:
    server = start_uvicorn(block, name, directory, **env)
    yield server
    code = server.stop()
    output = server.output()
    # uvicorn shuts down, then re-raises the SIGTERM it caught (0.29+): both are a clean stop.
    assert code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def ai_service(
    database_url: str, app_topic: PubSubNames, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Uvicorn]:
    directory = tmp_path_factory.mktemp("readme_app")
    env = app_env(database_url, app_topic, directory / "spool")
    yield from serving(block_starting("# app.py"), "app", directory, **env)


@pytest.fixture(scope="module")
def backend(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uvicorn]:
    directory = tmp_path_factory.mktemp("readme_documents")
    yield from serving(
        block_starting("# documents.py"), "documents", directory, DATABASE_URL=database_url
    )


@pytest.fixture(scope="module")
def ai_service_without_its_database(
    postgres_server: LocalService, app_topic: PubSubNames, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Uvicorn]:
    missing = make_url(postgres_server.address).set(database="b2b_no_such_database")
    directory = tmp_path_factory.mktemp("readme_app_no_database")
    env = app_env(missing.render_as_string(hide_password=False), app_topic, directory / "spool")
    yield from serving(block_starting("# app.py"), "app", directory, **env)


async def test_the_ai_service_under_uvicorn_holds_calls_records_and_answers(
    ai_service: Uvicorn, app_topic: PubSubNames, db: DatabaseManager
) -> None:
    # Given an organization on the pro plan
    org = await provisioned_org(db, plan="pro")
    user = uuid.uuid4()
    async with httpx.AsyncClient(base_url=ai_service.url, timeout=30) as client:
        # When a summary is asked for
        response = await client.post(f"/summaries/{org}", params={"user_id": str(user)})
        # Then it answers with the event id, the call's estimate is held until its event lands
        assert response.status_code == 200, ai_service.output()
        event_id = response.json()["event_id"]
        summary = await client.get(f"/usage/{org}/summary", headers=ADMIN)
        unauthorized = await client.get(f"/usage/{org}/summary")
    assert summary.status_code == 200, summary.text
    assert summary.json()["tokens_reserved"] > 0
    assert unauthorized.status_code == 401
    # And the event, with its user and hold, is on the topic
    [(data, _)] = pull_all(app_topic.subscription_path, 1)
    event = json.loads(data)
    assert (event["event_id"], event["user_id"]) == (event_id, str(user))
    assert event["reservation_id"] is not None


async def test_the_ai_service_under_uvicorn_answers_a_denied_hold_with_429(
    ai_service: Uvicorn, db: DatabaseManager
) -> None:
    # Given a free organization whose allowance is almost all held
    org = await provisioned_org(db, plan="free")
    assert (await UsageService(db).reserve_tokens(org, 99_900)).allowed
    # When a summary is asked for
    async with httpx.AsyncClient(base_url=ai_service.url, timeout=30) as client:
        response = await client.post(f"/summaries/{org}", params={"user_id": str(uuid.uuid4())})
    # Then it is refused with 429, saying what is used, held and left
    assert response.status_code == 429, response.text
    body = response.json()
    assert (body["error"], body["used"], body["remaining"]) == ("token_limit_exceeded", 0, 100)
    assert body["limit"] == 100_000
    # And says when to retry: when the period ends
    assert body["period_end"] is not None
    assert int(response.headers["Retry-After"]) > 0


async def test_the_ai_service_under_uvicorn_without_its_database_fails_open_or_answers_503(
    ai_service_without_its_database: Uvicorn,
) -> None:
    # Given the app started on a database that does not exist
    org = uuid.uuid4()
    async with httpx.AsyncClient(base_url=ai_service_without_its_database.url, timeout=30) as c:
        # When a call is asked for and the usage is read
        call = await c.post(f"/summaries/{org}", params={"user_id": str(uuid.uuid4())})
        summary = await c.get(f"/usage/{org}/summary", headers=ADMIN)
    # Then the call goes ahead (the token check fails open) and the read is a 503 with the fix
    assert call.status_code == 200, call.text
    assert summary.status_code == 503, summary.text
    assert "createdb" in summary.json()["detail"]
    assert summary.headers["Retry-After"] == "5"
    # And uvicorn's own logging, with no set-up, shows why in the text of the library's line
    [warmup] = [
        line
        for line in ai_service_without_its_database.output().splitlines()
        if line.startswith("usage.database_warmup_failed")
    ]
    assert "b2b_no_such_database" in warmup
    assert "createdb" in warmup


async def test_the_backend_under_uvicorn_reserves_refuses_and_releases_storage(
    backend: Uvicorn, db: DatabaseManager
) -> None:
    org = await provisioned_org(db, plan="free")  # 1 GiB
    async with httpx.AsyncClient(base_url=backend.url, timeout=30) as client:
        stored = await client.post(f"/documents/{org}/d1", params={"size_bytes": 1000})
        too_big = await client.post(f"/documents/{org}/d2", params={"size_bytes": 2**30})
        released = await client.delete(f"/documents/{org}/d1")
    assert (stored.status_code, stored.json()) == (200, {"used_bytes": 1000})
    assert too_big.status_code == 413, too_big.text
    assert released.json() == {"released_bytes": 1000}
    assert (await counters(db, org))["storage_used_bytes"] == 0


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
    [(data, _)] = pull_all(pubsub_names.subscription_path, 1)
    assert json.loads(data)["organization_id"] == str(org)


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
