"""Shared helpers for the interop scenarios (imported by the scripts next to this file).

Every scenario script runs the official `tilebox-workflows` SDK against the server named by
`TILEBOX_API_URL` (plaintext `http://127.0.0.1:PORT`, no API key) and ends by printing one line
`interop-summary: {json}` that `tests/interop.rs` parses and asserts on.

The direct runner executes tasks in this process, so tasks record what they saw in the module-level
`EVENTS` list. Task ids, parent ids and dependencies come from the task record the server handed
out, so the Rust side can check the task graph the server built, not only the order of execution.
"""

import json
import os
from typing import Any

from tilebox.workflows import Client, ExecutionContext, Job

SUMMARY_PREFIX = "interop-summary: "

EVENTS: list[dict[str, Any]] = []


def connect() -> Client:
    """A client for the server under test; the URL must come from the test, never the default."""
    return Client(url=os.environ["TILEBOX_API_URL"])


def connect_runner() -> Client:
    """A client for the scenario's runners: `TILEBOX_RUNNER_API_URL`, which the test always sets (the
    same URL as `TILEBOX_API_URL` for one server, the other replica for two). No fallback: a two-replica
    run that lost the variable must fail, not silently run everything on one server."""
    return Client(url=os.environ["TILEBOX_RUNNER_API_URL"])


def record(context: ExecutionContext, kind: str, **fields: Any) -> dict[str, Any]:
    """Appends an execution event for the running task and returns it, so the task can set `outcome`."""
    task = context.current_task
    event = {
        "kind": kind,
        "task_id": str(task.id),
        "job_id": str(task.job.id),
        "parent_id": str(task.parent_id) if task.parent_id else None,
        "depends_on": [str(dependency) for dependency in task.depends_on],
        "retry_count": task.retry_count,
        "identifier": [task.identifier.name, task.identifier.version],
        "outcome": "computed",
        **fields,
    }
    EVENTS.append(event)
    return event


def fail(event: dict[str, Any], message: str) -> None:
    """Marks the event as failed and raises, which fails the task with `was_workflow_error=true`."""
    event["outcome"] = "failed"
    raise RuntimeError(message)


def job_summary(job: Job) -> dict[str, Any]:
    """What the SDK decoded from `GetJob`: state and execution statistics (zero counts left out)."""
    stats = job.execution_stats
    return {
        "id": str(job.id),
        "name": job.name,
        "state": job.state.name,
        "total_tasks": stats.total_tasks,
        "tasks_by_state": {state.name: count for state, count in stats.tasks_by_state.items() if count},
    }


def emit(summary: dict[str, Any]) -> None:
    """Prints the summary as the last line of stdout."""
    print(SUMMARY_PREFIX + json.dumps(summary, sort_keys=True), flush=True)
