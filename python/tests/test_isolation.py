"""The runtime imports and runs tasks inside isolated, own-GIL sub-interpreters (CPython 3.13's
`_interpreters`), where the Rust runner hosts each release."""

from __future__ import annotations

import _interpreters
import json
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

PYTHON_ROOT = Path(__file__).resolve().parent.parent

RELEASE = """
import asyncio
from datetime import datetime, timezone

from tilebox.workflows import ExecutionContext, Runner, Task


class Leaf(Task):
    n: int
    when: datetime

    def execute(self, context: ExecutionContext) -> None:
        pass


class Root(Task):
    count: int

    async def execute(self, context: ExecutionContext) -> None:
        await asyncio.sleep(0)
        context.progress("leaves").add(self.count)
        context.logger.info("fanning out", count=self.count)
        context.submit_subtasks([Leaf(n, datetime(2024, 1, 2, tzinfo=timezone.utc)) for n in range(self.count)])


runner = Runner(tasks=[Root, Leaf])
"""

# Runs inside the sub-interpreter; the result goes to a file, since only plain data crosses.
DRIVER = """
import json, sys
sys.path[:0] = [{python_root!r}, {release_root!r}]

from tilebox.workflows import _host

calls = []
_host.sink = lambda kind, payload: calls.append((kind, json.loads(payload)))
identifiers = _host.load("isolated_release:runner")
task = {{
    "id": "00000000-0000-4000-8000-000000000001",
    "display": "Root",
    "retry_count": 0,
    "parent_id": None,
    "depends_on": [],
    "job": {{"id": "00000000-0000-4000-8000-000000000002", "name": "job", "trace_parent": ""}},
    "cluster": "dev",
}}
outcome = _host.execute("Root", "v0.0", b"2", task)
group = outcome["subtasks"]["task_groups"][0]
group["inputs"] = [data.decode() for data in group["inputs"]]
with open({result!r}, "w") as file:
    json.dump({{"identifiers": identifiers, "outcome": outcome, "sink": calls}}, file)
"""


def _run_in_isolated_interpreter(tmp_path: Path, name: str) -> dict[str, Any]:
    release_root = tmp_path / name
    release_root.mkdir()
    (release_root / "isolated_release.py").write_text(textwrap.dedent(RELEASE))
    result = tmp_path / f"{name}.json"
    code = DRIVER.format(python_root=str(PYTHON_ROOT), release_root=str(release_root), result=str(result))

    interpreter = _interpreters.create("isolated")
    try:
        failure = _interpreters.exec(interpreter, code)
    finally:
        _interpreters.destroy(interpreter)
    assert failure is None, f"the task failed inside the sub-interpreter: {failure}"
    outcome: dict[str, Any] = json.loads(result.read_text())
    return outcome


def the_isolated_configuration_has_its_own_gil_and_refuses_legacy_extensions() -> None:
    config = _interpreters.new_config("isolated")
    assert config.gil == "own"
    assert config.check_multi_interp_extensions
    assert not config.use_main_obmalloc


def the_isolated_interpreter_really_refuses_single_phase_extensions() -> None:
    # The reason msgspec (and with it the official SDK) cannot run there; proves the test setup.
    interpreter = _interpreters.create("isolated")
    try:
        failure = _interpreters.exec(interpreter, "import _testsinglephase")
    finally:
        _interpreters.destroy(interpreter)
    if failure is not None and failure.type.__name__ == "ModuleNotFoundError":
        pytest.skip("this CPython build has no _testsinglephase module")
    assert failure is not None
    assert failure.msg == "module _testsinglephase does not support loading in subinterpreters"


def a_task_runs_inside_an_isolated_sub_interpreter(tmp_path: Path) -> None:
    result = _run_in_isolated_interpreter(tmp_path, "release")

    assert result["identifiers"] == [
        ["Root", "v0.0", "isolated_release.Root"],
        ["Leaf", "v0.0", "isolated_release.Leaf"],
    ]
    outcome = result["outcome"]
    assert outcome["computed"] is True
    assert outcome["progress"] == [["leaves", 2, 0]]
    assert outcome["subtasks"]["task_groups"][0]["inputs"] == [
        '{"n":0,"when":"2024-01-02T00:00:00+00:00"}',
        '{"n":1,"when":"2024-01-02T00:00:00+00:00"}',
    ]
    logs = [payload for kind, payload in result["sink"] if kind == "log"]
    assert [(log["message"], log["fields"]["count"]) for log in logs] == [("fanning out", 2)]


def two_isolated_interpreters_run_tasks_in_parallel_threads(tmp_path: Path) -> None:
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results[name] = _run_in_isolated_interpreter(tmp_path, name)
        except BaseException as error:  # noqa: BLE001 -- reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(f"release{index}",)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    if errors:
        pytest.fail(f"a sub-interpreter failed: {errors[0]!r}")
    assert all(result["outcome"]["computed"] for result in results.values())  # type: ignore[index]
