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
* `post_mortem`, when the host sets it to True (`tilebox task run --pdb`), makes a task that
  raises stop in `pdb.post_mortem` at its failing frame (the task's own traceback, without this
  module's frames) before its failure is reported; not after `q` in a `breakpoint()` (a
  `bdb.BdbQuit`, reported as the task's failure as it is, the host stops the run there).
* `encode_input(name, version, text)` answers the input bytes the SDK would submit for the task
  whose fields (or, for one field, its wire form) `text` gives as JSON (`tilebox task run
  --input`); `_serialization.InputError` says what does not fit.

Several host threads may call `execute` concurrently: all per-task state lives in the call.
Whatever the task raises, `BaseException`s such as `SystemExit` and `KeyboardInterrupt` too, is
the task's failure (a workflow error, counted against its retries), and so is an outcome the
server cannot take: an invalid display or progress. Formatting the exception is guarded: an
exception whose `__repr__` or `__str__` raises is described by its type name. Every string of
the outcome is valid UTF-8 (lone surrogates in messages are escaped).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable
from contextvars import copy_context
from typing import Any
from uuid import UUID

from tilebox.workflows import _logging
from tilebox.workflows._serialization import InputError
from tilebox.workflows._serialization import encode_input as encode_task_input
from tilebox.workflows._submissions import merge_future_tasks
from tilebox.workflows.cache import NoCache
from tilebox.workflows.context import ExecutionContext, InvalidProgressError
from tilebox.workflows.data import CurrentJob, CurrentTask, NoopWorkflowTracer, RunnerContext, TaskIdentifier
from tilebox.workflows.runner import Runner
from tilebox.workflows.task import Task

__all__ = ["encode_input", "execute", "load", "post_mortem", "sink"]

sink: Callable[[str, str], None] | None = None
post_mortem: bool = False

# The longest display a task may set, in characters (the hosted API's limit; the server's is
# `api::limits::MAX_DISPLAY_CHARS`).
_MAX_DISPLAY = 1024


class InvalidDisplayError(ValueError):
    """A display the task set that the server cannot store; it fails the task."""


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


def load(object_path: str) -> list[tuple[str, str, str]]:
    """Import the release's runner object and keep it; returns, in registration order, each task
    class's identifier (name, version) and the class (`module.QualName`), to name it in errors."""
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
    return [
        (name, version, f"{task.__module__}.{task.__qualname__}") for (name, version), (_, task) in loaded.tasks.items()
    ]


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
            final_display = _checked_display(current.display, display)
            progress = _checked_progress(context.progress_snapshot())
        # Anything the task raised, `SystemExit` and `KeyboardInterrupt` included, is its own
        # failure: let through, it would be a runner fault, re-queued without counting.
        except BaseException as error:  # noqa: BLE001
            # `q` in a debugger (`breakpoint()`) raises BdbQuit: the user is done, no post-mortem.
            if post_mortem and not _is_debugger_quit(error):
                _debug(error)
            return _failure(
                _valid_display(current.display, display),
                error,
                workflow_error=True,
                progress=_valid_progress(context.progress_snapshot()),
            )

    return {
        "computed": True,
        "display": final_display,
        "progress": progress,
        "subtasks": subtasks,
    }


def _is_debugger_quit(error: BaseException) -> bool:
    bdb = sys.modules.get("bdb")  # only loaded if a debugger ran
    return bdb is not None and isinstance(error, bdb.BdbQuit)


def _debug(error: BaseException) -> None:
    """`pdb.post_mortem` at the frame that raised, walking up to the task's own frames only."""
    import pdb  # noqa: PLC0415, T100 -- the debugger on request; only `task run --pdb` imports it

    tb = error.__traceback__
    # This module's frames (execute, _run) come first: start at the task's code.
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_globals.get("__name__") == __name__:
        tb = tb.tb_next
    if tb is None:
        return
    print(f"{_type_name(error)}: {_guarded(lambda: str(error), '<str() failed>')}", file=sys.stdout)
    print("entering the post-mortem debugger at the failing frame (q to quit)", file=sys.stdout)
    pdb.post_mortem(tb)


def encode_input(name: str, version: str, text: str) -> bytes:
    """The SDK's input bytes for the task `(name, version)` given by hand as JSON (see above)."""
    loaded = _loaded
    if loaded is None:
        raise RuntimeError("no runner is loaded in this interpreter: call load() first")
    registered = loaded.tasks.get((name, version))
    if registered is None:
        raise InputError(f"the runner has no task {name}@{version}")
    return encode_task_input(registered[1], text)


def _checked_display(value: Any, handed: str) -> str:
    """The display the task left (None is an unset, empty field), or `InvalidDisplayError` saying
    why the server could not take it. The display handed in passes as it is."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidDisplayError(f"the task's display must be a str, got {_type_name(value)}")
    if str.__eq__(value, handed):
        return handed
    try:
        value.encode()
    except UnicodeEncodeError as error:
        raise InvalidDisplayError(f"the task's display is not valid UTF-8 (lone surrogate at {error.start})") from None
    if len(value) > _MAX_DISPLAY:
        raise InvalidDisplayError(f"the task's display is {len(value)} characters; the limit is {_MAX_DISPLAY}")
    return str(value)


def _valid_display(value: Any, handed: str) -> str:
    """The display to report a failure under: the task's, if the server can take it."""
    try:
        return _checked_display(value, handed)
    except InvalidDisplayError:
        return handed


def _checked_progress(snapshot: list[tuple[Any, Any, Any]]) -> list[tuple[str | None, int, int]]:
    """The progress entries, checked as the server stores them (the trackers check every
    amount when it is added; this catches counters changed behind their back)."""
    checked = []
    for label, total, done in snapshot:
        for what, amount in (("total", total), ("done amount", done)):
            if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount < 2**64:
                name = "progress (no label)" if label is None else f"progress {label!r}"
                raise InvalidProgressError(f"{name}: the {what} is not an int from 0 to 2**64 - 1")
        checked.append((label, int(total), int(done)))
    return checked


def _valid_progress(snapshot: list[tuple[Any, Any, Any]]) -> list[tuple[str | None, int, int]]:
    try:
        return _checked_progress(snapshot)
    except InvalidProgressError:
        return []


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


def _failure(display: str, error: BaseException, *, workflow_error: bool, progress: list[Any]) -> dict[str, Any]:
    """A failed outcome; the display gets `repr(error)` appended, capped at 1024 like the SDK's."""
    kind = _type_name(error)
    reason = _guarded(lambda: repr(error), f"{kind}(<repr() failed>)")
    return {
        "computed": False,
        "display": _with_reason(display, reason),
        "workflow_error": workflow_error,
        "progress": progress,
        "error": {
            "type": kind,
            "message": _guarded(lambda: str(error), "<str() failed>"),
            "traceback": _guarded(lambda: "".join(traceback.format_exception(error)), ""),
        },
    }


def _with_reason(display: str, reason: str) -> str:
    """`display` with the line `reason`, at most `_MAX_DISPLAY` characters.

    As the SDK does, the reason gets the room the display leaves (measuring an empty display as
    "None"); but never less than half the limit, or all of itself if shorter: the head of a long
    display is cut for it, as the server cuts a display it appends a reason to. (The SDK's bound
    goes negative for a display near the limit: it drops the reason, or mangles it and exceeds
    the limit.)
    """
    room = max(_MAX_DISPLAY - len(display or "None") - 1, min(len(reason), _MAX_DISPLAY // 2))
    message = reason[:room]
    if message == "":
        return display[max(len(display) - _MAX_DISPLAY, 0) :]
    kept = _MAX_DISPLAY - len(message) - 1
    return f"{display[len(display) - kept :] if len(display) > kept else display}\n{message}"


def _guarded(describe: Callable[[], Any], fallback: str) -> str:
    """`describe()` as valid UTF-8 text, or `fallback` if it raises (anything at all) or is no str."""
    try:
        text = describe()
        if not isinstance(text, str):
            return fallback
        return _utf8(text)
    except BaseException:  # noqa: BLE001 -- a hostile __repr__/__str__ must not fail the report
        return fallback


def _type_name(value: Any) -> str:
    """The name of `value`'s type; a metaclass cannot make it raise or be something else."""
    try:
        name = type.__dict__["__name__"].__get__(type(value))
    except BaseException:  # noqa: BLE001
        return "BaseException"
    return _utf8(name) if isinstance(name, str) else "BaseException"


def _utf8(text: str) -> str:
    """`text` with lone surrogates escaped (`\\ud800`), so it encodes as UTF-8."""
    try:
        str.encode(text)
    except UnicodeEncodeError:
        return str.encode(text, "utf-8", "backslashreplace").decode()
    return str(text)


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
