"""`Runner`: the registry of task classes a release offers, plus its cache and context type.

In this runtime a `Runner` is not started by the release code: `tilebox runner start` (or
`tilebox task run`) imports the object named in `tilebox.workflow.toml` and runs its tasks.
"""

from __future__ import annotations

from typing import Any

from tilebox.workflows.cache import JobCache
from tilebox.workflows.data import RunnerContext, TaskIdentifier
from tilebox.workflows.task import Task, TaskMeta

__all__ = ["Runner"]


class Runner:
    """Registry and process-level resources for executing workflow tasks."""

    def __init__(
        self,
        *,
        tasks: list[type[Task]] | None = None,
        cache: JobCache | None = None,
        context: type[RunnerContext] | None = None,
    ) -> None:
        self.cache = cache
        self.context = context
        self._tasks_by_identifier: dict[TaskIdentifier, type[Task]] = {}
        for task in tasks or []:
            self.register(task)

    def register(self, task: type[Task]) -> None:
        """Register a task class; it must define `execute` itself and have a unique identifier."""
        meta = TaskMeta.for_task(task)
        if not meta.executable:
            shown = task.__name__
            if meta.identifier.name != task.__name__:
                shown += f" ({meta.identifier.name})"
            raise ValueError(
                f"Task {shown} is not executable. It must have an execute method in order to register it with a "
                "task runner."
            )
        if meta.identifier in self._tasks_by_identifier:
            raise ValueError(
                f"Duplicate task identifier: A task '{meta.identifier.name}' with version "
                f"'{meta.identifier.version}' is already registered."
            )
        self._tasks_by_identifier[meta.identifier] = task

    @property
    def task_identifiers(self) -> list[TaskIdentifier]:
        return list(self._tasks_by_identifier)

    @property
    def tasks_by_identifier(self) -> dict[TaskIdentifier, type[Task]]:
        return self._tasks_by_identifier

    def connect_to(self, client: Any, cluster: Any = None) -> Any:
        raise NotImplementedError(
            "Runner.connect_to is not available in the in-process tilebox runtime: this runner is started by "
            "`tilebox runner start` (or `tilebox task run`) from the `runner` entry of tilebox.workflow.toml"
        )
