"""The README's configuration table lists every variable a settings object reads."""

from __future__ import annotations

import re

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_core import DatabaseConfig, UsageServiceSettings
from biz2bricks_core.retention import RetentionSettings
from biz2bricks_producer import ProducerSettings
from biz2bricks_rollup.archive import ArchiveSettings
from biz2bricks_rollup.books import StatementSettings
from biz2bricks_rollup.server import ServeSettings
from tests.support import ROOT

SETTINGS: list[type[BaseSettings]] = [
    DatabaseConfig,
    UsageServiceSettings,
    ProducerSettings,
    ConsumerSettings,
    ServeSettings,
    RetentionSettings,
    ArchiveSettings,
    StatementSettings,
]
# Read by the commands themselves (argparse defaults), not by a settings object.
COMMAND_VARIABLES = {"LOG_LEVEL"}


def environment_variables(settings: type[BaseSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix") or "")
    names: set[str] = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add((prefix + field_name).upper())
        elif isinstance(alias, AliasChoices):
            names |= {str(choice).upper() for choice in alias.choices}
        else:
            names.add(str(alias).upper())
    return names


def documented_variables() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell):
            documented.add(name)
        # "`USAGE_MAX_IN_FLIGHT_MESSAGES` / `_BYTES`" documents USAGE_MAX_IN_FLIGHT_BYTES too.
        first = re.search(r"`([A-Z][A-Z0-9_]*)`", cell)
        for suffix in re.findall(r"`(_[A-Z0-9_]+)`", cell):
            if first is not None:
                stem = first.group(1).rsplit("_", suffix.count("_"))[0]
                documented.add(stem + suffix)
    return documented


def test_every_variable_of_every_settings_object_is_in_the_configuration_table() -> None:
    read = set().union(*(environment_variables(s) for s in SETTINGS)) | COMMAND_VARIABLES
    missing = read - documented_variables()
    assert not missing, f"README configuration table lacks: {sorted(missing)}"


def test_every_settings_object_reads_the_dot_env_file() -> None:
    for settings in SETTINGS:
        assert settings.model_config.get("env_file") == ".env", settings.__name__
