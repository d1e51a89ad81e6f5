"""Database settings read from the environment (and a ``.env`` file), validated at start-up."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from biz2bricks_core.errors import ConfigurationError

__all__ = ["DatabaseConfig", "Settings", "describe_validation_error"]


def describe_validation_error(
    error: ValidationError, prefix: str = "", prefixed: frozenset[str] = frozenset()
) -> str:
    """Turn a pydantic ValidationError into one line per bad environment variable.

    Fields named in ``prefixed`` are read as ``prefix`` + name (the settings class's
    ``env_prefix``): the message names the variable as it is set in the environment
    (``USAGE_TOKEN_CHECK_FAIL_OPEN``, not ``TOKEN_CHECK_FAIL_OPEN``).
    """
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        if loc and loc[0] in prefixed:
            loc[0] = prefix + loc[0]
        name = "_".join(loc).upper() or "settings"
        value = item.get("input")
        shown = "" if "PASSWORD" in name or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{name}: {item['msg']}{shown}")
    return "invalid configuration: " + "; ".join(lines)


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """Settings whose validation errors become one ConfigurationError naming each variable."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            prefix = str(self.model_config.get("env_prefix") or "")
            prefixed = frozenset(
                name
                for name, field in type(self).model_fields.items()
                if field.validation_alias is None and field.alias is None
            )
            raise ConfigurationError(describe_validation_error(error, prefix, prefixed)) from None


class DatabaseConfig(Settings):
    """Where the database is and how to pool connections to it.

    ``DATABASE_URL`` wins over the ``DATABASE_*`` family. With ``USE_CLOUD_SQL_CONNECTOR`` the
    Cloud SQL Python Connector opens the connections to ``CLOUD_SQL_INSTANCE``.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    database_url: SecretStr | None = Field(default=None, validation_alias="DATABASE_URL")
    use_cloud_sql_connector: bool = Field(default=False, validation_alias="USE_CLOUD_SQL_CONNECTOR")
    cloud_sql_instance: str | None = Field(default=None, validation_alias="CLOUD_SQL_INSTANCE")
    cloud_sql_ip_type: Annotated[Literal["PUBLIC", "PRIVATE", "PSC"], BeforeValidator(_upper)] = (
        Field(default="PUBLIC", validation_alias="CLOUD_SQL_IP_TYPE")
    )
    database_user: str = Field(default="postgres", validation_alias="DATABASE_USER")
    database_password: SecretStr = Field(
        default=SecretStr(""), validation_alias="DATABASE_PASSWORD"
    )
    database_name: str = Field(default="biz2bricks", validation_alias="DATABASE_NAME")
    database_host: str = Field(default="127.0.0.1", validation_alias="DATABASE_HOST")
    database_port: int = Field(default=5432, ge=1, le=65535, validation_alias="DATABASE_PORT")
    db_pool_size: int = Field(default=5, ge=1, validation_alias="DB_POOL_SIZE")
    db_max_overflow: int = Field(default=10, ge=0, validation_alias="DB_MAX_OVERFLOW")
    db_pool_timeout_s: float = Field(default=30.0, gt=0, validation_alias="DB_POOL_TIMEOUT")
    db_pool_recycle_s: int = Field(default=1800, ge=-1, validation_alias="DB_POOL_RECYCLE")
    db_pool_pre_ping: bool = Field(default=True, validation_alias="DB_POOL_PRE_PING")
    db_echo: bool = Field(default=False, validation_alias="DB_ECHO")

    @model_validator(mode="after")
    def _check_cloud_sql(self) -> DatabaseConfig:
        if self.use_cloud_sql_connector and not self.database_url and not self.cloud_sql_instance:
            raise ValueError(
                "CLOUD_SQL_INSTANCE must be set (project:region:instance) "
                "when USE_CLOUD_SQL_CONNECTOR is true"
            )
        if self.database_url is not None:
            url = self.database_url.get_secret_value()
            if not url.startswith(("postgresql", "postgres://")):
                raise ValueError("DATABASE_URL must be a postgresql:// URL")
        return self

    @property
    def uses_connector(self) -> bool:
        """True when connections go through the Cloud SQL Python Connector."""
        return self.use_cloud_sql_connector and self.database_url is None

    def sqlalchemy_url(self) -> str:
        """The SQLAlchemy URL with the asyncpg driver (secret: never log it)."""
        if self.database_url is not None:
            return to_asyncpg_url(self.database_url.get_secret_value())
        if self.uses_connector:
            return "postgresql+asyncpg://"
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+asyncpg",
            username=self.database_user,
            password=self.database_password.get_secret_value() or None,
            host=self.database_host,
            port=self.database_port,
            database=self.database_name,
        ).render_as_string(hide_password=False)

    def safe_description(self) -> str:
        """Where the database is, without credentials, for logs and error messages."""
        if self.uses_connector:
            return f"Cloud SQL instance {self.cloud_sql_instance} database {self.database_name}"
        if self.database_url is not None:
            from sqlalchemy.engine import make_url

            url = make_url(to_asyncpg_url(self.database_url.get_secret_value()))
            return f"postgresql://{url.host or 'localhost'}:{url.port or 5432}/{url.database}"
        return f"postgresql://{self.database_host}:{self.database_port}/{self.database_name}"


def to_asyncpg_url(url: str) -> str:
    """Accept libpq-style URLs (``postgres://``, ``postgresql://``) and pin the asyncpg driver."""
    for prefix in (
        "postgresql+asyncpg://",
        "postgresql+psycopg://",
        "postgresql://",
        "postgres://",
    ):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url
