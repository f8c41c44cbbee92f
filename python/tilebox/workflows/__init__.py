"""Tilebox workflows: the task-authoring runtime of the `tilebox` runner.

A pure standard-library implementation of the official SDK's authoring API (`tilebox-workflows`
0.66.0): tasks are dataclasses, their inputs are serialised byte for byte like the SDK does, and
subtasks, progress, logging and job caches behave the same. It imports inside isolated
sub-interpreters, where the runner executes each release.

Modules:

* `task`: `Task`, its metaclass (dataclass conversion, `execute` validation, identifiers);
* `context`: `ExecutionContext`, `FutureTask`, `ProgressUpdate`;
* `runner`: `Runner`, the registry a release exposes;
* `cache`: job caches (`InMemoryCache`, `LocalFileSystemCache`, `NoCache`);
* `data`: `TaskIdentifier`, `RunnerContext` and the running task's record;
* `client`: a `Client` placeholder (job submission is not part of this runtime);
* `observability.logging`: the SDK's logging helpers (`get_logger`, no-op exporters);
* `_json`: msgspec's JSON dialect in pure Python; `_serialization`: the SDK's input envelope;
* `_submissions`: merging subtasks into task groups; `_logging`: `context.logger` and forwarding;
* `_host`: the entry points the Rust runner calls.
"""

from tilebox.workflows import cache
from tilebox.workflows.client import Client
from tilebox.workflows.context import ExecutionContext, FutureTask, ProgressUpdate
from tilebox.workflows.data import CurrentJob, CurrentTask, RunnerContext, TaskIdentifier
from tilebox.workflows.runner import Runner
from tilebox.workflows.task import Task, TaskMeta

Job = CurrentJob  # the official SDK exports its job record under this name

__all__ = [
    "Client",
    "CurrentJob",
    "CurrentTask",
    "ExecutionContext",
    "FutureTask",
    "Job",
    "ProgressUpdate",
    "Runner",
    "RunnerContext",
    "Task",
    "TaskIdentifier",
    "TaskMeta",
    "cache",
]
