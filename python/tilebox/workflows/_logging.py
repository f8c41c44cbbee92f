"""Task logging: `context.logger` and the forwarding of log records to the host while a task runs.

`StructuredLogger` mirrors the SDK's: `logger.info("message", key=value)` writes a stdlib record on
`tilebox.workflows.tasks` whose structured attributes (bound ones first, `task_id` among them)
are normalised to JSON-compatible values.

While a task runs, `task_scope` marks the running task in a context variable and keeps a handler
on the root logger. Every record emitted in that context, from `context.logger` or from any stdlib
logger, becomes a plain JSON record handed to the scope's `emit` callable (the host's sink).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from tilebox.workflows import _json
from tilebox.workflows._serialization import normalize_log_value

__all__ = ["TASK_LOGGER_NAME", "StructuredLogger", "record_payload", "task_logger", "task_scope"]

TASK_LOGGER_NAME = "tilebox.workflows.tasks"
_ATTRIBUTES = "tilebox_structured_log_attributes"

namespace_logger = logging.getLogger("tilebox.workflows")
namespace_logger.setLevel(logging.DEBUG)
task_logger = logging.getLogger(TASK_LOGGER_NAME)
task_logger.setLevel(getattr(logging, os.environ.get("TILEBOX_LOG_LEVEL", "INFO").strip().upper(), logging.INFO))


class _NormalizedAttributes(dict[str, Any]):
    """Attributes already normalised for every handler of a record."""


class StructuredLogger:
    """Structured records on top of a stdlib logger: `info(message, *args, **attributes)`."""

    def __init__(self, logger: logging.Logger, attributes: dict[str, Any] | None = None) -> None:
        self._logger = logger
        self._attributes = attributes or {}

    def bind(self, **attributes: Any) -> StructuredLogger:
        """A logger adding `attributes` to every record (after the ones already bound)."""
        return StructuredLogger(self._logger, self._attributes | attributes)

    def log(self, level: int, message: object, /, *args: Any, **attributes: Any) -> None:
        self._log(level, message, args, attributes, exc_info=False)

    def debug(self, message: object, /, *args: Any, **attributes: Any) -> None:
        self._log(logging.DEBUG, message, args, attributes, exc_info=False)

    def info(self, message: object, /, *args: Any, **attributes: Any) -> None:
        self._log(logging.INFO, message, args, attributes, exc_info=False)

    def warning(self, message: object, /, *args: Any, **attributes: Any) -> None:
        self._log(logging.WARNING, message, args, attributes, exc_info=False)

    def error(self, message: object, /, *args: Any, **attributes: Any) -> None:
        self._log(logging.ERROR, message, args, attributes, exc_info=False)

    def exception(self, message: object, /, *args: Any, **attributes: Any) -> None:
        self._log(logging.ERROR, message, args, attributes, exc_info=True)

    def critical(self, message: object, /, *args: Any, **attributes: Any) -> None:
        self._log(logging.CRITICAL, message, args, attributes, exc_info=False)

    def _log(
        self, level: int, message: object, args: tuple[Any, ...], attributes: dict[str, Any], *, exc_info: bool
    ) -> None:
        if not self._logger.isEnabledFor(level):
            return
        normalized = _NormalizedAttributes(
            {key: normalize_log_value(value) for key, value in {**self._attributes, **attributes}.items()}
        )
        self._logger.log(level, message, *args, exc_info=exc_info, extra={_ATTRIBUTES: normalized}, stacklevel=3)


# ---- records as plain data --------------------------------------------------------------------------

_LEVEL_NAMES = {"WARNING": "WARN", "CRITICAL": "FATAL"}


def severity_number(level: int) -> int:
    """OpenTelemetry severity for a stdlib level (DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21)."""
    if level < logging.DEBUG:
        return 0
    if level > logging.CRITICAL + 3:
        return 24
    base, step = divmod(level, 10)
    return {1: 5, 2: 9, 3: 13, 4: 17, 5: 21}[base] + min(step, 3)


def _json_text(value: Any) -> str:
    return _json.encode(value).decode("utf-8")


def _finite(value: Any) -> Any:
    # JSON has no NaN/Infinity; keep the sink's payload parseable.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _attribute_value(value: Any) -> Any:
    """OpenTelemetry-compatible: primitives stay, lists keep primitive items, the rest is JSON text."""
    if isinstance(value, (str, bool, int, float)):
        return _finite(value)
    if isinstance(value, list):
        return [_finite(item) if isinstance(item, (str, bool, int, float)) else _json_text(item) for item in value]
    return _json_text(value)


def record_payload(record: logging.LogRecord, task_id: str) -> dict[str, Any]:
    """The plain record the host receives for `record`, emitted while task `task_id` ran."""
    attributes = getattr(record, _ATTRIBUTES, None)
    if not isinstance(attributes, dict):
        attributes = {}
    fields = {str(key): _attribute_value(value) for key, value in attributes.items()}
    if record.exc_info:
        exception_type, exception, stack = record.exc_info
        if exception_type is not None:
            fields["exception.type"] = exception_type.__name__
        if exception is not None:
            fields["exception.message"] = str(exception)
        if stack is not None:
            fields["exception.stacktrace"] = "".join(traceback.format_exception(*record.exc_info))
    return {
        "time_unix_nano": int(record.created * 1e9),
        "level": _LEVEL_NAMES.get(record.levelname, record.levelname),
        "severity_number": severity_number(record.levelno),
        "message": record.getMessage(),
        "fields": fields,
        "task_id": task_id,
        "logger": record.name,
    }


def format_line(payload: dict[str, Any]) -> str:
    """A readable one-record text form, for stderr when there is no host sink."""
    moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(payload["time_unix_nano"] / 1e9))
    fields = {key: value for key, value in payload["fields"].items() if key not in ("task_id", "exception.stacktrace")}
    extra = "".join(f" {key}={json.dumps(value, ensure_ascii=False)}" for key, value in fields.items())
    line = f"{moment}Z {payload['level']:<5} [task {payload['task_id']}] {payload['message']}{extra}\n"
    stack = payload["fields"].get("exception.stacktrace")
    return line + stack if stack else line


# ---- forwarding while tasks run ---------------------------------------------------------------------

Emit = Callable[[str, str], None]


@dataclass(frozen=True)
class TaskScope:
    task_id: str
    emit: Emit


_current_scope: ContextVar[TaskScope | None] = ContextVar("tilebox_task_scope", default=None)
_forwarding: ContextVar[bool] = ContextVar("tilebox_forwarding_log", default=False)


class _ForwardingHandler(logging.Handler):
    """On the root logger while tasks run; forwards records of the task running in this context."""

    def emit(self, record: logging.LogRecord) -> None:
        scope = _current_scope.get()
        if scope is None or _forwarding.get():
            return
        token = _forwarding.set(True)  # a sink that logs must not loop back here
        try:
            scope.emit("log", json.dumps(record_payload(record, scope.task_id), ensure_ascii=False))
        except Exception:  # noqa: BLE001 -- a failing sink must not fail the task
            self.handleError(record)
        finally:
            _forwarding.reset(token)


_handler = _ForwardingHandler()
_handler_lock = threading.Lock()
_running_scopes = 0


@contextlib.contextmanager
def task_scope(task_id: str, emit: Emit) -> Iterator[TaskScope]:
    """Attribute log records emitted in this context to `task_id` and forward them to `emit`."""
    global _running_scopes  # noqa: PLW0603 -- one handler shared by all running tasks
    scope = TaskScope(task_id, emit)
    with _handler_lock:
        if _running_scopes == 0:
            logging.getLogger().addHandler(_handler)
        _running_scopes += 1
    token = _current_scope.set(scope)
    try:
        yield scope
    finally:
        _current_scope.reset(token)
        with _handler_lock:
            _running_scopes -= 1
            if _running_scopes == 0:
                logging.getLogger().removeHandler(_handler)


def write_to_stderr(kind: str, payload: str) -> None:
    """The fallback sink: log records as readable lines, progress is not shown."""
    if kind == "log":
        sys.stderr.write(format_line(json.loads(payload)))
        sys.stderr.flush()
