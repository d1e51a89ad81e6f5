"""``biz2bricks-rollup provision`` and ``grant``: the operator's way in, safe to repeat."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from biz2bricks_core import DatabaseConfig, DatabaseManager, UsageService
from biz2bricks_rollup.__main__ import main as rollup_main


@pytest.fixture
def command_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", database_url)
    return database_url


def _last_json(out: str) -> dict[str, object]:
    return dict(json.loads(out.strip().splitlines()[-1]))


def _grants(database_url: str, org: uuid.UUID) -> list[tuple[int, int]]:
    async def read() -> list[tuple[int, int]]:
        db = DatabaseManager(DatabaseConfig(database_url=database_url))
        try:
            grants = await UsageService(db).list_grants(org)
            return [(g.tokens, g.priority) for g in grants]
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_provision_creates_the_organization_and_repeating_it_changes_nothing(
    command_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an organization never seen
    org = uuid.uuid4()
    # When it is provisioned twice on the free plan
    assert rollup_main(["provision", str(org), "--plan", "free"]) == 0
    first = _last_json(capsys.readouterr().out)
    assert rollup_main(["provision", str(org), "--plan", "free"]) == 0
    second = _last_json(capsys.readouterr().out)
    # Then it exists with the plan's limits, the same both times
    assert first["plan"] == "free"
    assert first["organization_id"] == str(org)
    assert first == second


def test_provision_moves_an_organization_to_another_plan(
    command_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    org = uuid.uuid4()
    assert rollup_main(["provision", str(org), "--plan", "free"]) == 0
    assert rollup_main(["provision", str(org), "--plan", "pro"]) == 0
    assert _last_json(capsys.readouterr().out)["plan"] == "pro"


def test_an_unknown_plan_is_one_line_naming_the_known_plans(
    command_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rollup_main(["provision", str(uuid.uuid4()), "--plan", "platinum"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "'platinum'" in err[0]
    assert "free" in err[0]


def test_grant_twice_with_the_same_arguments_grants_once(
    command_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a provisioned organization
    org = uuid.uuid4()
    assert rollup_main(["provision", str(org), "--plan", "free"]) == 0
    # When the same grant command runs twice
    argv = ["grant", str(org), "5000", "--reason", "welcome", "--priority", "5"]
    assert rollup_main(argv) == 0
    first = _last_json(capsys.readouterr().out)
    assert rollup_main(argv) == 0
    second = _last_json(capsys.readouterr().out)
    # Then there is one grant of 5000 tokens
    assert first["grant_id"] == second["grant_id"]
    assert first["tokens"] == 5000
    assert _grants(command_env, org) == [(5000, 5)]


def test_grant_with_its_own_ids_grants_each(
    command_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    org = uuid.uuid4()
    assert rollup_main(["provision", str(org), "--plan", "free"]) == 0
    for _ in range(2):
        grant_id = str(uuid.uuid4())
        argv = [
            "grant",
            str(org),
            "100",
            "--grant-id",
            grant_id,
            "--expires-at",
            "2099-01-01T00:00:00Z",
        ]
        assert rollup_main(argv) == 0
        assert _last_json(capsys.readouterr().out)["grant_id"] == grant_id
    assert sorted(_grants(command_env, org)) == [(100, 10), (100, 10)]


def test_a_grant_to_an_organization_never_provisioned_is_refused_in_one_line(
    command_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rollup_main(["grant", str(uuid.uuid4()), "100"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_grant_id_reused_with_other_values_is_refused(
    command_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    org = uuid.uuid4()
    assert rollup_main(["provision", str(org), "--plan", "free"]) == 0
    grant_id = str(uuid.uuid4())
    assert rollup_main(["grant", str(org), "100", "--grant-id", grant_id]) == 0
    assert rollup_main(["grant", str(org), "200", "--grant-id", grant_id]) == 2
    assert grant_id in capsys.readouterr().err
