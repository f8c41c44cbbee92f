"""Evaluate `shapes.py` with the official SDK and print the results as one JSON document.

Run with the Python of a venv that has `tilebox-workflows==0.66.0` installed (and without this
repository's `python/` on `sys.path`); `conftest.py` does that once per test session.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tilebox.workflows.runner.executor import ExecutionContext

import shapes
import tilebox.workflows
from tilebox.workflows.task import merge_future_tasks_to_submissions


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def serialized() -> dict[str, dict[str, str]]:
    results = {}
    for name, task in shapes.serialize_cases().items():
        try:
            results[name] = {"hex": task._serialize().hex()}  # noqa: SLF001
        except Exception as error:  # noqa: BLE001 -- the error is the result
            results[name] = {"error": describe_error(error)}
    return results


def decoded() -> dict[str, str]:
    results = {}
    for name, cls, data in shapes.decode_cases():
        try:
            results[name] = "ok: " + repr(cls._deserialize(data))
        except Exception as error:  # noqa: BLE001 -- the error is the result
            results[name] = "error: " + describe_error(error)
    return results


def merged() -> dict[str, object]:
    results = {}
    for name, scenario in shapes.MERGE_SCENARIOS.items():
        context = ExecutionContext(None, None, None)  # type: ignore[arg-type] -- merging needs no runner
        scenario(context)
        submissions = merge_future_tasks_to_submissions(context._sub_tasks, "my-cluster")  # noqa: SLF001
        results[name] = {
            "task_groups": [
                {
                    "dependencies_on_other_groups": group.dependencies_on_other_groups,
                    "inputs": [data.hex() for data in group.inputs],
                    "identifier_pointers": group.identifier_pointers,
                    "cluster_slug_pointers": group.cluster_slug_pointers,
                    "display_pointers": group.display_pointers,
                    "max_retries_values": group.max_retries_values,
                    "optional_values": group.optional_values,
                }
                for group in submissions.task_groups
            ],
            "cluster_slug_lookup": submissions.cluster_slug_lookup,
            "identifier_lookup": [
                [identifier.name, identifier.version] for identifier in submissions.identifier_lookup
            ],
            "display_lookup": submissions.display_lookup,
            "protobuf_hex": submissions.to_message().SerializeToString().hex(),
        }
    return results


if __name__ == "__main__":
    document = {
        "sdk_file": tilebox.workflows.__file__,
        "serialize": serialized(),
        "decode": decoded(),
        "merge": merged(),
    }
    json.dump(document, sys.stdout)
