"""Consumer settings, read from the environment once in the entry point."""

from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import SettingsConfigDict

from biz2bricks_core.config import Settings


class ConsumerSettings(Settings):
    """Where to pull from and how: batch size, leases, retries, shutdown, health port."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, case_sensitive=False
    )

    project_id: str = Field(
        default="", validation_alias=AliasChoices("PUBSUB_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
    )
    topic: str = Field(default="usage-events", validation_alias="USAGE_TOPIC")
    subscription: str = Field(default="usage-consumer", validation_alias="USAGE_SUBSCRIPTION")
    alerts_topic: str = Field(default="usage-alerts", validation_alias="USAGE_ALERTS_TOPIC")
    # Unpublished alerts are also looked for this often (e.g. left by a replica that died).
    alert_poll_s: float = Field(default=10.0, gt=0, validation_alias="CONSUMER_ALERT_POLL")
    batch_max_messages: int = Field(
        default=1000, ge=1, le=5000, validation_alias="CONSUMER_BATCH_MAX_MESSAGES"
    )
    batch_linger_s: float = Field(
        default=0.05, ge=0, le=5, validation_alias="CONSUMER_BATCH_LINGER"
    )
    pull_max_messages: int = Field(
        default=1000, ge=1, le=1000, validation_alias="CONSUMER_PULL_MAX_MESSAGES"
    )
    pull_concurrency: int = Field(
        default=4, ge=1, le=16, validation_alias="CONSUMER_PULL_CONCURRENCY"
    )
    write_concurrency: int = Field(
        default=2, ge=1, le=8, validation_alias="CONSUMER_WRITE_CONCURRENCY"
    )
    pull_timeout_s: float = Field(default=2.0, gt=0, validation_alias="CONSUMER_PULL_TIMEOUT")
    ack_deadline_s: int = Field(default=60, ge=10, le=600, validation_alias="CONSUMER_ACK_DEADLINE")
    commit_retry_max_s: float = Field(
        default=300.0, gt=0, validation_alias="CONSUMER_COMMIT_RETRY_MAX"
    )
    retry_initial_s: float = Field(default=0.2, gt=0, validation_alias="CONSUMER_RETRY_INITIAL")
    retry_max_backoff_s: float = Field(
        default=10.0, gt=0, validation_alias="CONSUMER_RETRY_MAX_BACKOFF"
    )
    shutdown_grace_s: float = Field(default=20.0, gt=0, validation_alias="CONSUMER_SHUTDOWN_GRACE")
    pricing_refresh_s: float = Field(
        default=300.0, gt=0, validation_alias="CONSUMER_PRICING_REFRESH"
    )
    unpriced_log_interval_s: float = Field(
        default=300.0, gt=0, validation_alias="CONSUMER_UNPRICED_LOG_INTERVAL"
    )
    health_host: str = Field(default="0.0.0.0", validation_alias="CONSUMER_HEALTH_HOST")
    health_port: int = Field(default=8080, ge=0, le=65535, validation_alias="PORT")
    exit_when_idle_s: float | None = Field(default=None, validation_alias="CONSUMER_EXIT_WHEN_IDLE")

    @model_validator(mode="after")
    def _need_project(self) -> ConsumerSettings:
        if not self.project_id:
            raise ValueError(
                "PUBSUB_PROJECT_ID (or GOOGLE_CLOUD_PROJECT) must name the Google Cloud project"
            )
        return self

    @property
    def subscription_path(self) -> str:
        """``projects/P/subscriptions/S``."""
        return f"projects/{self.project_id}/subscriptions/{self.subscription}"

    @property
    def topic_path(self) -> str:
        """``projects/P/topics/T``."""
        return f"projects/{self.project_id}/topics/{self.topic}"

    @property
    def alerts_topic_path(self) -> str:
        """``projects/P/topics/A``: where usage alerts are relayed."""
        return f"projects/{self.project_id}/topics/{self.alerts_topic}"
