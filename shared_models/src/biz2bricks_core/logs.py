"""Structured logging: one event name per record plus its fields, JSON off a terminal."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from biz2bricks_core.errors import ConfigurationError

__all__ = ["LOG_LEVELS", "JsonFormatter", "configure_logging", "event_name"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def event_name(record: logging.LogRecord) -> str:
    """The record's event name: its message template up to the first ": " (the library's lines
    read ``event.name: what happened``, so that plain logging shows the why too)."""
    template = str(record.msg)
    return template.split(": ", 1)[0] if record.args else record.getMessage()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "severity": record.levelname,
            "logger": record.name,
            "event": event_name(record),
            "message": record.getMessage(),  # what Cloud Logging shows as the line's text
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class KeyValueFormatter(logging.Formatter):
    """Readable on a terminal: ``12:00:01 INFO event key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "INFO", json_logs: bool | None = None) -> None:
    """Log to stderr: JSON when not on a terminal (Cloud Logging reads it), key=value otherwise.

    Raises ConfigurationError naming ``LOG_LEVEL`` when ``level`` is not a level name.
    """
    if level.strip().upper() not in LOG_LEVELS:
        raise ConfigurationError(
            f"LOG_LEVEL (or --log-level): {level!r} is not a log level; "
            f"use one of {', '.join(LOG_LEVELS)}"
        )
    use_json = not sys.stderr.isatty() if json_logs is None else json_logs
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.strip().upper())
