"""`ExecutionContext`: what a running task can do (submit subtasks, report progress, log, cache)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tilebox.workflows.data import CurrentTask, NoopWorkflowTracer, RunnerContext, TaskIdentifier
from tilebox.workflows.task import Task, TaskMeta

if TYPE_CHECKING:
    from tilebox.workflows._logging import StructuredLogger
    from tilebox.workflows.cache import JobCache

__all__ = ["ExecutionContext", "FutureTask", "InvalidProgressError", "ProgressUpdate"]

MAX_PROGRESS_INDICATORS = 1000
# Progress amounts and `max_retries` travel as protobuf uint64 and int64.
MAX_PROGRESS_AMOUNT = 2**64 - 1
MAX_RETRIES = 2**63 - 1


class InvalidProgressError(ValueError):
    """A progress label or amount the server cannot store; it fails the task that used it."""


def _progress_name(label: str | None) -> str:
    return "progress (no label)" if label is None else f"progress {label!r}"


def _amount(label: str | None, count: Any) -> int:
    """`count` as a non-negative int, or `InvalidProgressError` saying what is wrong with it."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise InvalidProgressError(f"{_progress_name(label)}: the amount must be an int, got {type(count).__name__}")
    if count < 0:
        raise InvalidProgressError(f"{_progress_name(label)}: amount {count} is negative")
    return count


def _grown(label: str | None, what: str, current: int, count: Any) -> int:
    grown = current + _amount(label, count)
    if grown > MAX_PROGRESS_AMOUNT:
        raise InvalidProgressError(f"{_progress_name(label)}: the {what} would be {grown}, above 2**64 - 1")
    return grown


@dataclass
class FutureTask:
    """A subtask submitted during `execute`; sent when `execute` returns."""

    index: int
    task: Task
    depends_on: list[int]
    cluster: str | None
    max_retries: int
    optional: bool

    def identifier(self) -> TaskIdentifier:
        return TaskMeta.for_task(self.task).identifier

    def input(self) -> bytes:
        return self.task._serialize()  # noqa: SLF001

    def display(self) -> str:
        return type(self.task).__name__


class ProgressUpdate:
    """A progress counter: `add(n)` grows the total, `done(n)` the completed amount."""

    def __init__(self, label: str | None, on_change: Callable[[], None] | None = None) -> None:
        self._label = label
        self._total = 0
        self._done = 0
        self._on_change = on_change

    def add(self, count: int) -> None:
        """Add `count` (a non-negative int) to the total amount of work."""
        self._total = _grown(self._label, "total", self._total, count)
        if self._on_change is not None:
            self._on_change()

    def done(self, count: int) -> None:
        """Mark `count` (a non-negative int) units of work as done."""
        self._done = _grown(self._label, "done amount", self._done, count)
        if self._on_change is not None:
            self._on_change()


class ExecutionContext:
    """The execution context of one task execution."""

    def __init__(
        self,
        current_task: CurrentTask,
        job_cache: JobCache,
        logger: StructuredLogger,
        runner_context: RunnerContext | None = None,
        on_progress: Callable[[ExecutionContext], None] | None = None,
    ) -> None:
        self.current_task = current_task
        self.job_cache = job_cache
        self._logger = logger
        self._runner_context = runner_context if runner_context is not None else RunnerContext()
        self._on_progress = on_progress
        self._sub_tasks: list[FutureTask] = []
        self._progress_indicators: dict[str | None, ProgressUpdate] = {}

    def submit_subtask(
        self,
        task: Task,
        depends_on: FutureTask | list[FutureTask] | None = None,
        cluster: str | None = None,
        max_retries: int = 0,
        optional: bool = False,
    ) -> FutureTask:
        """Submit a subtask of the current task, optionally depending on earlier subtasks.

        `cluster=None` (or `""`) means the runner's cluster. `optional=True` lets the job and the
        dependants go on when this subtask fails.
        """
        if depends_on is None:
            depends_on = []
        elif isinstance(depends_on, FutureTask):
            depends_on = [depends_on]
        elif not isinstance(depends_on, list):
            raise TypeError(f"Invalid dependency. Expected FutureTask or list[FutureTask], got {type(depends_on)}")

        dependencies = []
        for dependency in depends_on:
            if not isinstance(dependency, FutureTask):
                raise TypeError(f"Invalid dependency. Expected FutureTask, got {type(dependency)}")
            if dependency.index >= len(self._sub_tasks):
                raise ValueError(f"Dependent task {dependency.index} does not exist")
            dependencies.append(dependency.index)

        if isinstance(max_retries, bool) or not isinstance(max_retries, int):
            raise TypeError(f"max_retries must be an int, got {type(max_retries).__name__}")
        if not 0 <= max_retries <= MAX_RETRIES:
            raise ValueError(f"max_retries must be from 0 to 2**63 - 1, got {max_retries}")

        subtask = FutureTask(
            index=len(self._sub_tasks),
            task=task,
            depends_on=dependencies,  # cycles cannot be built here; the server rejects them anyway
            cluster=cluster,
            max_retries=max_retries,
            optional=optional,
        )
        self._sub_tasks.append(subtask)
        return subtask

    def submit_subtasks(
        self,
        tasks: Sequence[Task],
        depends_on: FutureTask | list[FutureTask] | None = None,
        cluster: str | None = None,
        max_retries: int = 0,
        optional: bool = False,
    ) -> list[FutureTask]:
        """`submit_subtask` for each task, all with the same dependencies and options."""
        return [
            self.submit_subtask(
                task, depends_on=depends_on, cluster=cluster, max_retries=max_retries, optional=optional
            )
            for task in tasks
        ]

    def submit_batch(self, tasks: Sequence[Task], cluster: str | None = None, max_retries: int = 0) -> list[FutureTask]:
        """Deprecated: use `submit_subtasks`."""
        warnings.warn("submit_batch is deprecated, use submit_subtasks instead", DeprecationWarning, stacklevel=2)
        return self.submit_subtasks(tasks, cluster=cluster, max_retries=max_retries)

    def progress(self, label: str | None = None) -> ProgressUpdate:
        """The progress counter for `label` (the same object for the same label)."""
        if label == "":
            label = None
        if label is not None:
            if not isinstance(label, str):
                raise InvalidProgressError(f"a progress label must be a str, got {type(label).__name__}")
            try:
                label.encode()
            except UnicodeEncodeError as error:
                raise InvalidProgressError(
                    f"{_progress_name(label)}: the label is not valid UTF-8 (lone surrogate at {error.start})"
                ) from None
        existing = self._progress_indicators.get(label)
        if existing is not None:
            return existing
        if len(self._progress_indicators) > MAX_PROGRESS_INDICATORS:
            raise ValueError(f"Cannot create more than {MAX_PROGRESS_INDICATORS} progress indicators per task.")
        tracker = ProgressUpdate(label, self._progress_changed)
        self._progress_indicators[label] = tracker
        self._progress_changed()
        return tracker

    def progress_snapshot(self) -> list[tuple[str | None, Any, Any]]:
        """Every tracker as `(label, total, done)`, in creation order."""
        return [(label, tracker._total, tracker._done) for label, tracker in self._progress_indicators.items()]  # noqa: SLF001

    def _progress_changed(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self)

    @property
    def runner_context(self) -> RunnerContext:
        return self._runner_context

    @property
    def tracer(self) -> Any:
        return getattr(self._runner_context, "tracer", None) or NoopWorkflowTracer()

    @property
    def logger(self) -> StructuredLogger:
        return self._logger
