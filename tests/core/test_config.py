"""DatabaseConfig: environment parsing, precedence, errors that name the variable, secrets."""

from __future__ import annotations

import pytest

from biz2bricks_core import ConfigurationError, DatabaseConfig

DB_VARS = (
    "DATABASE_URL",
    "USE_CLOUD_SQL_CONNECTOR",
    "CLOUD_SQL_INSTANCE",
    "DATABASE_USER",
    "DATABASE_PASSWORD",
    "DATABASE_NAME",
    "DATABASE_HOST",
    "DATABASE_PORT",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
    "DB_POOL_TIMEOUT",
    "DB_POOL_RECYCLE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory) -> None:
    for name in DB_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def test_every_variable_of_the_original_library_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given every variable set
    env = {
        "DATABASE_USER": "app",
        "DATABASE_PASSWORD": "s3cret",
        "DATABASE_NAME": "usage",
        "DATABASE_HOST": "db.internal",
        "DATABASE_PORT": "6543",
        "DB_POOL_SIZE": "7",
        "DB_MAX_OVERFLOW": "3",
        "DB_POOL_TIMEOUT": "4.5",
        "DB_POOL_RECYCLE": "600",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # When the config is read
    config = DatabaseConfig()
    # Then each field has its value and the URL is built from the family
    assert (config.db_pool_size, config.db_max_overflow) == (7, 3)
    assert (config.db_pool_timeout_s, config.db_pool_recycle_s) == (4.5, 600)
    assert config.sqlalchemy_url() == "postgresql+asyncpg://app:s3cret@db.internal:6543/usage"


def test_database_url_overrides_the_family(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_HOST", "ignored")
    monkeypatch.setenv("USE_CLOUD_SQL_CONNECTOR", "true")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@h:5/d")
    config = DatabaseConfig()
    assert config.sqlalchemy_url() == "postgresql+asyncpg://u:p@h:5/d"
    assert not config.uses_connector


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_PORT", "eighty"),
        ("DATABASE_PORT", "70000"),
        ("DB_POOL_SIZE", "0"),
        ("DB_POOL_TIMEOUT", "-1"),
        ("USE_CLOUD_SQL_CONNECTOR", "maybe"),
        ("DATABASE_URL", "mysql://x"),
    ],
)
def test_a_malformed_value_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        DatabaseConfig()


def test_connector_without_instance_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_CLOUD_SQL_CONNECTOR", "1")
    with pytest.raises(ConfigurationError, match="CLOUD_SQL_INSTANCE"):
        DatabaseConfig()


def test_connector_settings_select_the_connector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_CLOUD_SQL_CONNECTOR", "true")
    monkeypatch.setenv("CLOUD_SQL_INSTANCE", "proj:europe-west1:main")
    config = DatabaseConfig()
    assert config.uses_connector
    assert "proj:europe-west1:main" in config.safe_description()


def test_password_never_appears_in_repr_or_description(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2-secret")
    config = DatabaseConfig()
    assert "hunter2-secret" not in repr(config)
    assert "hunter2-secret" not in str(config)
    assert "hunter2-secret" not in config.safe_description()
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2-secret@h/d")
    config = DatabaseConfig()
    assert "hunter2-secret" not in repr(config)
    assert "hunter2-secret" not in config.safe_description()


def test_env_file_is_read(tmp_path: pytest.TempPathFactory) -> None:
    (tmp_path / ".env").write_text("DATABASE_NAME=from_dotenv\n")  # type: ignore[operator]
    assert DatabaseConfig().database_name == "from_dotenv"


def test_keyword_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_NAME", "env")
    assert DatabaseConfig(database_name="kw").database_name == "kw"


def test_a_prefixed_setting_is_named_with_its_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    from biz2bricks_core import UsageServiceSettings

    monkeypatch.setenv("USAGE_TOKEN_CHECK_FAIL_OPEN", "maybe")
    with pytest.raises(ConfigurationError, match=r"USAGE_TOKEN_CHECK_FAIL_OPEN.*'maybe'"):
        UsageServiceSettings()


def test_the_cloud_sql_ip_type_is_one_of_the_connector_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUD_SQL_IP_TYPE", "bogus")
    with pytest.raises(ConfigurationError, match="CLOUD_SQL_IP_TYPE"):
        DatabaseConfig()
    monkeypatch.setenv("CLOUD_SQL_IP_TYPE", "private")
    assert DatabaseConfig().cloud_sql_ip_type == "PRIVATE"
