"""Entry points the Rust runner calls inside a release's interpreter.

Only plain Python objects cross this boundary (str, bytes, int, bool, None, lists, tuples, dicts),
so it works the same in the main interpreter and in isolated sub-interpreters.

* `load(object_path)` imports the release's `Runner` (`module:object` or `module.object`) and
  returns its identifiers as `(name, version)` in registration order.
* `execute(name, version, input, task)` runs one task and returns its outcome as a dict:
  `{"computed": True, "display", "progress", "subtasks"}` or
  `{"computed": False, "display", "workflow_error", "progress", "error": {type, message, traceback}}`.
  `progress` is a list of `(label or None, total, done)`; `subtasks` is None or the plain
  `TaskSubmissions` described in `_submissions`.
* `sink`, when the host sets it to a callable taking two strings, receives while tasks run
  `sink("log", <json record>)` for every log record (see `_logging.record_payload`) and
  `sink("progress", <json {"task_id", "progress": [[label, total, done], ...]}>)` whenever a
  progress counter changes. Without a sink, log lines go to stderr.

Several host threads may call `execute` concurrently: all per-task state lives in the call.
Exceptions that are not `Exception`s (KeyboardInterrupt, SystemExit) propagate, as in the SDK.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import threading
import traceback
from collections.abc import Awaitable, Callable
from contextvars import copy_context
from typing import Any
from uuid import UUID

from tilebox.workflows import _logging
from tilebox.workflows._submissions import merge_future_tasks
from tilebox.workflows.cache import NoCache
from tilebox.workflows.context import ExecutionContext
from tilebox.workflows.data import CurrentJob, CurrentTask, NoopWorkflowTracer, RunnerContext, TaskIdentifier
from tilebox.workflows.runner import Runner
from tilebox.workflows.task import Task

__all__ = ["execute", "load", "sink"]

sink: Callable[[str, str], None] | None = None

_MAX_DISPLAY = 1024


class _Loaded:
    """The runner of this interpreter, with the per-runner objects tasks share."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.cache = runner.cache if runner.cache is not None else NoCache()
        context_type = runner.context or RunnerContext
        self.runner_context = context_type(NoopWorkflowTracer())
        self.tasks = {
            (identifier.name, identifier.version): (identifier, task)
            for identifier, task in runner.tasks_by_identifier.items()
        }
        # The last job seen, as (text sent, parsed id, its text): the tasks of a batch usually
        # share their job, and parsing and formatting its UUID is a good part of a no-op call.
        self.last_job: tuple[str, UUID | str, str] = ("", "", "")

    def job_id(self, text: str) -> tuple[UUID | str, str]:
        """The job id as the SDK hands it out, and as text (the cache group's name)."""
        sent, parsed, formatted = self.last_job
        if sent != text:
            parsed = _uuid(text)
            formatted = str(parsed)
            self.last_job = (text, parsed, formatted)
        return parsed, formatted


_loaded: _Loaded | None = None
_load_lock = threading.Lock()


def load(object_path: str) -> list[tuple[str, str]]:
    """Import the release's runner object and keep it; returns its identifiers in registration order."""
    global _loaded  # noqa: PLW0603 -- one loaded runner per interpreter
    runner = _import_object(object_path)
    if not isinstance(runner, Runner):
        kind = type(runner)
        raise TypeError(
            f"{object_path} must be a tilebox.workflows.Runner, but it is a {kind.__module__}.{kind.__qualname__}"
        )
    loaded = _Loaded(runner)
    with _load_lock:
        _loaded = loaded
    return list(loaded.tasks)


def _import_object(object_path: str) -> Any:
    """Resolve `package.module:attribute.path` or the dotted `package.module.attribute` form."""
    if ":" in object_path:
        module_name, _, attribute_path = object_path.partition(":")
        return _get_attribute(importlib.import_module(module_name), attribute_path, object_path)
    parts = object_path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and (module_name == error.name or module_name.startswith(error.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise
        return _get_attribute(module, ".".join(parts[split:]), object_path)
    raise ValueError(f"{object_path!r} is not an object path: expected `module:object` or `module.object`")


def _get_attribute(module: Any, attribute_path: str, object_path: str) -> Any:
    value = module
    for name in attribute_path.split("."):
        try:
            value = getattr(value, name)
        except AttributeError:
            raise AttributeError(f"{object_path}: {value!r} has no attribute {name!r}") from None
    return value


def _emit(kind: str, payload: str) -> None:
    target = sink
    if target is not None:
        target(kind, payload)
    else:
        _logging.write_to_stderr(kind, payload)


def execute(name: str, version: str, input: bytes, task: dict[str, Any]) -> dict[str, Any]:  # noqa: A002 -- the contract's name
    """Run one task of the loaded runner; see the module documentation for the result shape."""
    loaded = _loaded
    if loaded is None:
        raise RuntimeError("no runner is loaded in this interpreter: call load() first")

    task_id = str(task["id"])
    display = task.get("display", "")
    registered = loaded.tasks.get((name, version))
    if registered is None:
        return _unknown_identifier(task_id, display, TaskIdentifier(name, version))
    identifier, task_class = registered

    with _logging.task_scope(task_id, _emit):
        try:
            job = task.get("job") or {}
            job_id, job_text = loaded.job_id(str(job.get("id", "")))
            current = _current_task(task, identifier, bytes(input), job_id)
            context = ExecutionContext(
                current,
                loaded.cache.group(job_text),
                _logging.StructuredLogger(_logging.task_logger, {"task_id": task_id}),
                loaded.runner_context,
                on_progress=_progress_reporter(task_id),
            )
        except Exception as error:  # noqa: BLE001 -- a runner-side problem, the task may run elsewhere
            return _failure(display, error, workflow_error=False, progress=[])

        try:
            instance = task_class._deserialize(current.input, loaded.runner_context)  # noqa: SLF001
            _run(instance, context)
            subtasks = merge_future_tasks(context._sub_tasks, str(task.get("cluster", "")))  # noqa: SLF001
        except Exception as error:  # noqa: BLE001 -- user code failed: report it as the task's failure
            return _failure(current.display, error, workflow_error=True, progress=context.progress_snapshot())

    return {
        "computed": True,
        # The SDK sends whatever the task left in `display`; None is an unset (empty) field.
        "display": "" if current.display is None else str(current.display),
        "progress": context.progress_snapshot(),
        "subtasks": subtasks,
    }


def _current_task(
    task: dict[str, Any], identifier: TaskIdentifier, input_bytes: bytes, job_id: UUID | str
) -> CurrentTask:
    job = task.get("job") or {}
    parent_id = task.get("parent_id")
    return CurrentTask(
        id=_uuid(task["id"]),
        identifier=identifier,
        input=input_bytes,
        display=task.get("display", ""),
        job=CurrentJob(id=job_id, name=job.get("name", ""), trace_parent=job.get("trace_parent", "")),
        parent_id=_uuid(parent_id) if parent_id else None,
        depends_on=[_uuid(dependency) for dependency in task.get("depends_on", [])],
        retry_count=int(task.get("retry_count", 0)),
    )


def _uuid(value: Any) -> UUID | str:
    """A UUID like the SDK hands out, or the text itself if the host sent something else."""
    try:
        return UUID(str(value))
    except ValueError:
        return str(value)


def _progress_reporter(task_id: str) -> Callable[[ExecutionContext], None]:
    def report(context: ExecutionContext) -> None:
        with contextlib.suppress(Exception):  # progress reporting must not fail the task
            _emit("progress", json.dumps({"task_id": task_id, "progress": context.progress_snapshot()}))

    return report


def _run(instance: Task, context: ExecutionContext) -> None:
    """Call `execute`; awaitables run on a fresh event loop (another thread if one is running here)."""
    result = instance.execute(context)
    if result is None or not inspect.isawaitable(result):
        return
    import asyncio  # noqa: PLC0415 -- only async tasks pay for importing asyncio
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_await(result))
    else:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(copy_context().run, asyncio.run, _await(result)).result()


async def _await(result: Awaitable[None]) -> None:
    await result


def _failure(display: str | None, error: BaseException, *, workflow_error: bool, progress: list[Any]) -> dict[str, Any]:
    """A failed outcome; the display gets `repr(error)` appended, capped like the SDK's at 1024."""
    message = repr(error)[: _MAX_DISPLAY - len(display or "None") - 1]
    return {
        "computed": False,
        "display": f"{display}" if message == "" else f"{display}\n{message}",
        "workflow_error": workflow_error,
        "progress": progress,
        "error": {
            "type": type(error).__name__,
            "message": str(error),
            "traceback": "".join(traceback.format_exception(error)),
        },
    }


def _unknown_identifier(task_id: str, display: str, identifier: TaskIdentifier) -> dict[str, Any]:
    message = f"Task {task_id} has unknown identifier {identifier}."
    with _logging.task_scope(task_id, _emit):
        _logging.StructuredLogger(_logging.task_logger).error(message, task_id=task_id, identifier=str(identifier))
    return {
        "computed": False,
        "display": display,
        "workflow_error": False,
        "progress": [],
        "error": {"type": "UnknownIdentifier", "message": message, "traceback": ""},
    }
