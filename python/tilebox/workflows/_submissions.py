"""Merge the subtasks submitted during one execution into `TaskSubmissions`, as plain data.

The algorithm is the official SDK's (same for job submission and subtasks):

1. every task's dependants are the later tasks listing it in `depends_on`;
2. tasks with the same `(set of dependencies, set of dependants)` share a group; groups are
   numbered by first appearance;
3. a group depends on the groups of its tasks' dependencies (deduplicated);
4. per task, in submission order, its group gets the input bytes and pointers into the identifier,
   cluster and display lookup tables, which are deduplicated in first-seen order.

The result is a dict of lists, bytes, ints and strings; the Rust host turns it into protobuf.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tilebox.workflows.context import FutureTask

__all__ = ["merge_future_tasks"]


class _Lookup:
    """Distinct values in first-seen order, with the index of each."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._index: dict[Any, int] = {}

    def index_of(self, value: Any) -> int:
        index = self._index.get(value)
        if index is None:
            index = len(self.values)
            self.values.append(value)
            self._index[value] = index
        return index


def merge_future_tasks(future_tasks: list[FutureTask], fallback_cluster: str) -> dict[str, Any] | None:
    """`TaskSubmissions` for `future_tasks` as plain data, or None when there are none.

    Serialising the inputs happens here, so errors in `_serialize` surface here too.
    """
    if not future_tasks:
        return None

    dependants: defaultdict[int, set[int]] = defaultdict(set)
    for task in future_tasks:
        for dependency in task.depends_on:
            dependants[dependency].add(task.index)

    group_keys = _Lookup()
    group_of_task: dict[int, int] = {}
    groups: list[dict[str, Any]] = []
    for task in future_tasks:
        key = (frozenset(task.depends_on), frozenset(dependants.get(task.index, ())))
        index = group_keys.index_of(key)
        if index == len(groups):
            groups.append(_new_group(task.depends_on))
        group_of_task[task.index] = index

    for group in groups:
        # A set, like the SDK: small ints iterate in ascending order.
        group["dependencies_on_other_groups"] = list(
            {group_of_task[task] for task in group["dependencies_on_other_groups"]}
        )

    clusters, identifiers, displays = _Lookup(), _Lookup(), _Lookup()
    for task in future_tasks:
        group = groups[group_of_task[task.index]]
        identifier = task.identifier()
        group["inputs"].append(task.input())
        group["identifier_pointers"].append(identifiers.index_of((identifier.name, identifier.version)))
        group["cluster_slug_pointers"].append(clusters.index_of(task.cluster or fallback_cluster))
        group["display_pointers"].append(displays.index_of(task.display()))
        group["max_retries_values"].append(task.max_retries)
        group["optional_values"].append(task.optional)

    return {
        "task_groups": groups,
        "cluster_slug_lookup": clusters.values,
        "identifier_lookup": identifiers.values,
        "display_lookup": displays.values,
    }


def _new_group(task_dependencies: list[int]) -> dict[str, Any]:
    return {
        "dependencies_on_other_groups": list(task_dependencies),
        "inputs": [],
        "identifier_pointers": [],
        "cluster_slug_pointers": [],
        "display_pointers": [],
        "max_retries_values": [],
        "optional_values": [],
    }
