"""Producer settings, read from the environment; keyword overrides allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from biz2bricks_core.config import Settings
from biz2bricks_core.errors import ConfigurationError


def _default_spool_dir() -> Path:
    return Path.home() / ".cache" / "biz2bricks" / "usage-spool"


class ProducerSettings(Settings):
    """Where to publish, how much to hold in memory, and where to spool during an outage."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, case_sensitive=False
    )

    project_id: str = Field(
        default="", validation_alias=AliasChoices("PUBSUB_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
    )
    topic: str = Field(default="usage-events", validation_alias="USAGE_TOPIC")
    spool_dir: Path = Field(default_factory=_default_spool_dir, validation_alias="USAGE_SPOOL_DIR")
    spool_max_bytes: int = Field(
        default=512 * 1024**2, ge=1024, validation_alias="USAGE_SPOOL_MAX_BYTES"
    )
    spool_segment_bytes: int = Field(
        default=8 * 1024**2, ge=1024, validation_alias="USAGE_SPOOL_SEGMENT_BYTES"
    )
    spool_fsync_interval_ms: int = Field(
        default=200, ge=1, validation_alias="USAGE_SPOOL_FSYNC_INTERVAL_MS"
    )
    spool_queue_max_messages: int = Field(
        default=50_000, ge=1, validation_alias="USAGE_SPOOL_QUEUE_MAX_MESSAGES"
    )
    max_in_flight_messages: int = Field(
        default=10_000, ge=1, validation_alias="USAGE_MAX_IN_FLIGHT_MESSAGES"
    )
    max_in_flight_bytes: int = Field(
        default=32 * 1024**2, ge=1024, validation_alias="USAGE_MAX_IN_FLIGHT_BYTES"
    )
    batch_max_messages: int = Field(default=500, ge=1, validation_alias="USAGE_BATCH_MAX_MESSAGES")
    batch_max_latency_ms: int = Field(
        default=20, ge=1, validation_alias="USAGE_BATCH_MAX_LATENCY_MS"
    )
    publish_timeout_s: float = Field(default=15.0, gt=0, validation_alias="USAGE_PUBLISH_TIMEOUT")
    exit_flush_timeout_s: float = Field(
        default=5.0, gt=0, validation_alias="USAGE_EXIT_FLUSH_TIMEOUT"
    )
    replay_interval_s: float = Field(default=2.0, gt=0, validation_alias="USAGE_REPLAY_INTERVAL")
    strict: bool = Field(default=False, validation_alias="USAGE_PRODUCER_STRICT")

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        if not self.project_id:
            raise ConfigurationError(
                "invalid configuration: PUBSUB_PROJECT_ID (or GOOGLE_CLOUD_PROJECT) must name "
                "the Google Cloud project"
            )

    @property
    def topic_path(self) -> str:
        """``projects/P/topics/T``."""
        return f"projects/{self.project_id}/topics/{self.topic}"
