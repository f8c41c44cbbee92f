"""The official SDK's logging helpers, as far as they make sense inside the runner.

Logs of running tasks are collected by the runner itself (see `tilebox.workflows._logging`), so
the helpers that would add console or OpenTelemetry exporters are accepted and do nothing;
release code calling them at import time keeps working.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from tilebox.workflows._logging import TASK_LOGGER_NAME, task_logger

__all__ = [
    "configure_console_logging",
    "configure_log_level",
    "configure_otel_logging",
    "configure_otel_logging_axiom",
    "configure_otel_tracing",
    "configure_otel_tracing_axiom",
    "get_logger",
]


def get_logger(name: str | None = None, level: int = logging.NOTSET) -> logging.Logger:
    """A stdlib logger below `tilebox.workflows.tasks` (a random name when none is given)."""
    logger = logging.getLogger(f"{TASK_LOGGER_NAME}.{name if name is not None else f'unnamed_logger_{uuid.uuid4()}'}")
    logger.setLevel(level)
    return logger


def configure_log_level(level: int = logging.INFO, *, tilebox_debug: bool = False) -> None:  # noqa: ARG001 -- the SDK's signature
    """Set the level of task log messages (`TILEBOX_LOG_LEVEL` at start-up)."""
    task_logger.setLevel(level)


def configure_console_logging(*args: Any, **kwargs: Any) -> None:
    """Accepted for compatibility: the runner shows task logs itself."""


def configure_otel_logging(*args: Any, **kwargs: Any) -> None:
    """Accepted for compatibility: the runner forwards task logs itself."""


configure_otel_logging_axiom = configure_otel_logging
configure_otel_tracing = configure_otel_logging
configure_otel_tracing_axiom = configure_otel_logging
