"""The host entry points (`_host.load` / `_host.execute` / `_host.sink`) end to end on a small
release module, as the Rust runner drives them."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tilebox.workflows import _host

RELEASE = """
import asyncio
import logging
import time
from datetime import datetime, timezone

from tilebox.workflows import ExecutionContext, Runner, Task
from tilebox.workflows.cache import InMemoryCache
from tilebox.workflows.observability.logging import get_logger

SINK_CALLS = []  # the test points this at the list its sink appends to


class Leaf(Task):
    n: int

    def execute(self, context: ExecutionContext) -> None:
        pass


class Reduce(Task):
    @staticmethod
    def identifier():
        return "tilebox.com/example/Reduce", "v1.3"

    def execute(self, context: ExecutionContext) -> None:
        pass


class Root(Task):
    count: int
    label: str = "items"

    def execute(self, context: ExecutionContext) -> None:
        context.current_task.display = f"Root({self.count})"
        progress = context.progress(self.label)
        progress.add(self.count)
        leaves = context.submit_subtasks([Leaf(n) for n in range(self.count)])
        context.submit_subtask(Reduce(), depends_on=leaves, cluster="gpu", max_retries=2, optional=True)
        progress.done(1)
        context.job_cache["root"] = str(context.current_task.job.id).encode()
        context.logger.info(
            "root %s done",
            "is",
            count=self.count,
            when=datetime(2024, 1, 2, tzinfo=timezone.utc),
            nested={"a": [1, 2]},
            nothing=None,
            items=[1, {"b": 2}],
            weird=object.__new__(Weird),
        )


class Weird:
    def __str__(self):
        return "weird!"


class SeesItsOwnLogs(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.logger.info("first")
        context.progress("p").add(1)
        logs = [kind for kind, _ in SINK_CALLS if kind == "log"]
        progress = [kind for kind, _ in SINK_CALLS if kind == "progress"]
        context.current_task.display = f"logs={len(logs)} progress={len(progress)}"


class Failing(Task):
    message: str

    def execute(self, context: ExecutionContext) -> None:
        tracker = context.progress("boom")
        tracker.add(5)
        tracker.done(2)
        raise ValueError(self.message)


class BadSubtask(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.submit_subtask(Holder(object()))


class Holder(Task):
    value: object


class AsyncTask(Task):
    async def execute(self, context: ExecutionContext) -> None:
        await asyncio.sleep(0)
        context.logger.warning("async done")


class LoopInside(Task):
    def execute(self, context: ExecutionContext) -> None:
        async def inner():
            await AsyncTask().execute(context)
        asyncio.run(inner())


class UsesLogging(Task):
    def execute(self, context: ExecutionContext) -> None:
        logging.getLogger("release.module").warning("stdlib %s", "works")
        logging.getLogger("release.module").info("below the root logger's WARNING level")
        get_logger("mine").info("through the SDK helper")
        try:
            1 / 0
        except ZeroDivisionError:
            context.logger.exception("it broke", step=3)


class Bound(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.logger.bind(stage="one").debug("hidden at INFO")
        context.logger.bind(stage="one").error("shown", extra_field=True)


class Slow(Task):
    name: str

    def execute(self, context: ExecutionContext) -> None:
        for step in range(5):
            context.logger.info(self.name, step=step)
            time.sleep(0.001)


class Versioned(Task):
    @staticmethod
    def identifier():
        return "Versioned", "v1.5"

    def execute(self, context: ExecutionContext) -> None:
        pass


class Custom(BaseException):
    pass


class Unprintable(Exception):
    def __str__(self):
        raise KeyboardInterrupt("from __str__")

    def __repr__(self):
        raise SystemExit("from __repr__")


class Hostile(Task):
    # Misbehaves as `how` says.
    how: str

    def execute(self, context: ExecutionContext) -> None:
        context.progress("kept").add(2)
        match self.how:
            case "exit":
                raise SystemExit(3)
            case "interrupt":
                raise KeyboardInterrupt
            case "custom":
                raise Custom("mine")
            case "unprintable":
                raise Unprintable
            case "surrogate":
                raise ValueError("bad \\ud800 text")
            case "negative":
                context.progress("p").add(-1)
            case "fraction":
                context.progress("p").done(1.5)
            case "text":
                context.progress("p").add("x")
            case "overflow":
                context.progress("p").add(2**64 - 1)
                context.progress("p").add(1)
            case "label":
                context.progress(7)
            case "poked":
                tracker = context.progress("p")
                tracker._total = -5
            case "display-int":
                context.current_task.display = 42
            case "display-surrogate":
                context.current_task.display = "ab\\ud800"
            case "display-long":
                context.current_task.display = "x" * 1025
            case "display-limit":
                context.current_task.display = "x" * 1024
            case "retries-huge":
                context.submit_subtask(Leaf(1), max_retries=2**64)
            case "retries-negative":
                context.submit_subtask(Leaf(1), max_retries=-1)
            case "retries-text":
                context.submit_subtask(Leaf(1), max_retries="2")


runner = Runner(
    tasks=[
        Root, Leaf, Reduce, SeesItsOwnLogs, Failing, BadSubtask,
        AsyncTask, LoopInside, UsesLogging, Bound, Slow, Hostile, Versioned,
    ],
    cache=InMemoryCache(),
)
not_a_runner = {"tasks": []}
"""

JOB_ID = "6f1c2d3e-0000-4000-8000-00000000abcd"


@pytest.fixture
def release(tmp_path: Path) -> Iterator[ModuleType]:
    """A release module under a fresh name, loaded into `_host`."""
    name = f"release_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(RELEASE))
    sys.path.insert(0, str(tmp_path))
    try:
        assert _host.load(f"{name}:runner")[:3] == [
            ("Root", "v0.0", f"{name}.Root"),
            ("Leaf", "v0.0", f"{name}.Leaf"),
            ("tilebox.com/example/Reduce", "v1.3", f"{name}.Reduce"),
        ]
        yield sys.modules[name]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch, release: ModuleType) -> list[tuple[str, Any]]:
    """Every sink call, decoded; the release module sees the same list."""
    calls: list[tuple[str, Any]] = []
    raw: list[tuple[str, str]] = []

    def receive(kind: str, payload: str) -> None:
        assert isinstance(kind, str)
        assert isinstance(payload, str)
        raw.append((kind, payload))
        calls.append((kind, json.loads(payload)))

    monkeypatch.setattr(release, "SINK_CALLS", raw)
    monkeypatch.setattr(_host, "sink", receive)
    return calls


def _task(display: str = "Display", task_id: str | None = None) -> dict[str, Any]:
    return {
        "id": task_id or str(uuid.uuid4()),
        "display": display,
        "retry_count": 0,
        "parent_id": None,
        "depends_on": [],
        "job": {"id": JOB_ID, "name": "job", "trace_parent": "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"},
        "cluster": "fallback-cluster",
    }


def _logs(calls: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [payload for kind, payload in calls if kind == "log"]


# ---- load ---------------------------------------------------------------------------------------


def load_accepts_the_dotted_form_too(release: ModuleType) -> None:
    identifiers = _host.load(f"{release.__name__}.runner")
    assert identifiers[-1] == ("Versioned", "v1.5", f"{release.__name__}.Versioned")
    assert len(identifiers) == 13


def load_refuses_objects_that_are_not_runners(release: ModuleType) -> None:
    with pytest.raises(TypeError) as raised:
        _host.load(f"{release.__name__}:not_a_runner")
    assert (
        str(raised.value)
        == f"{release.__name__}:not_a_runner must be a tilebox.workflows.Runner, but it is a builtins.dict"
    )


def load_reports_missing_modules_and_objects(release: ModuleType) -> None:
    with pytest.raises(ModuleNotFoundError):
        _host.load("no_such_module_anywhere:runner")
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        _host.load(f"{release.__name__}:missing")


# ---- execute ------------------------------------------------------------------------------------


def a_computed_task_returns_display_progress_and_subtasks(release: ModuleType, sink: list[Any]) -> None:
    outcome = _host.execute("Root", "v0.0", b'{"count":2,"label":"items"}', _task("Root"))

    assert outcome == {
        "computed": True,
        "display": "Root(2)",
        "progress": [("items", 2, 1)],
        "subtasks": {
            "task_groups": [
                {
                    "dependencies_on_other_groups": [],
                    "inputs": [b"0", b"1"],
                    "identifier_pointers": [0, 0],
                    "cluster_slug_pointers": [0, 0],
                    "display_pointers": [0, 0],
                    "max_retries_values": [0, 0],
                    "optional_values": [False, False],
                },
                {
                    "dependencies_on_other_groups": [0],
                    "inputs": [b""],
                    "identifier_pointers": [1],
                    "cluster_slug_pointers": [1],
                    "display_pointers": [1],
                    "max_retries_values": [2],
                    "optional_values": [True],
                },
            ],
            "cluster_slug_lookup": ["fallback-cluster", "gpu"],
            "identifier_lookup": [("Leaf", "v0.0"), ("tilebox.com/example/Reduce", "v1.3")],
            "display_lookup": ["Leaf", "Reduce"],
        },
    }
    assert release.runner.cache.group(JOB_ID)["root"] == JOB_ID.encode()


def a_task_without_subtasks_reports_none(release: ModuleType, sink: list[Any]) -> None:
    outcome = _host.execute("Leaf", "v0.0", b"7", _task("Leaf"))
    assert outcome == {"computed": True, "display": "Leaf", "progress": [], "subtasks": None}


def log_records_carry_normalised_fields(release: ModuleType, sink: list[Any]) -> None:
    task = _task()
    _host.execute("Root", "v0.0", b'{"count":1,"label":"items"}', task)

    [record] = _logs(sink)
    assert record["message"] == "root is done"
    assert record["level"] == "INFO"
    assert record["severity_number"] == 9
    assert record["task_id"] == task["id"]
    assert record["logger"] == "tilebox.workflows.tasks"
    assert isinstance(record["time_unix_nano"], int)
    assert record["fields"] == {
        "task_id": task["id"],
        "count": 1,
        "when": "2024-01-02T00:00:00+00:00",
        "nested": '{"a":[1,2]}',
        "nothing": "null",
        "items": [1, '{"b":2}'],
        "weird": "weird!",
    }


def the_sink_receives_logs_and_progress_while_the_task_runs(release: ModuleType, sink: list[Any]) -> None:
    task = _task()
    outcome = _host.execute("SeesItsOwnLogs", "v0.0", b"", task)

    # The task looked at the sink's list from inside `execute`.
    assert outcome["display"] == "logs=1 progress=2"
    progress = [payload for kind, payload in sink if kind == "progress"]
    assert progress == [
        {"task_id": task["id"], "progress": [["p", 0, 0]]},
        {"task_id": task["id"], "progress": [["p", 1, 0]]},
    ]


def stdlib_logging_and_exceptions_are_forwarded_for_the_running_task(release: ModuleType, sink: list[Any]) -> None:
    task = _task()
    _host.execute("UsesLogging", "v0.0", b"", task)

    stdlib, helper, exception = _logs(sink)
    assert (stdlib["logger"], stdlib["level"], stdlib["severity_number"]) == ("release.module", "WARN", 13)
    assert (stdlib["message"], stdlib["task_id"], stdlib["fields"]) == ("stdlib works", task["id"], {})
    assert (helper["logger"], helper["level"], helper["message"]) == (
        "tilebox.workflows.tasks.mine",
        "INFO",
        "through the SDK helper",
    )
    assert exception["level"] == "ERROR"
    assert exception["fields"]["step"] == 3
    assert exception["fields"]["exception.type"] == "ZeroDivisionError"
    assert exception["fields"]["exception.message"] == "division by zero"
    assert "1 / 0" in exception["fields"]["exception.stacktrace"]


def bound_fields_follow_the_task_id_and_debug_is_filtered(release: ModuleType, sink: list[Any]) -> None:
    task = _task()
    _host.execute("Bound", "v0.0", b"", task)
    [record] = _logs(sink)
    assert list(record["fields"].items()) == [("task_id", task["id"]), ("stage", "one"), ("extra_field", True)]


def logs_outside_tasks_are_not_forwarded(release: ModuleType, sink: list[Any]) -> None:
    import logging  # noqa: PLC0415

    _host.execute("Leaf", "v0.0", b"1", _task())
    logging.getLogger("release.module").warning("after the task")
    assert _logs(sink) == []


def async_tasks_run_on_a_fresh_event_loop(release: ModuleType, sink: list[Any]) -> None:
    assert _host.execute("AsyncTask", "v0.0", b"", _task())["computed"]
    assert _host.execute("LoopInside", "v0.0", b"", _task())["computed"]
    assert [record["message"] for record in _logs(sink)] == ["async done", "async done"]


def a_failing_task_reports_its_exception_and_progress(release: ModuleType, sink: list[Any]) -> None:
    outcome = _host.execute("Failing", "v0.0", b'"kaboom"', _task("Failing"))

    assert outcome["computed"] is False
    assert outcome["workflow_error"] is True
    assert outcome["display"] == "Failing\nValueError('kaboom')"
    assert outcome["progress"] == [("boom", 5, 2)]
    assert outcome["error"]["type"] == "ValueError"
    assert outcome["error"]["message"] == "kaboom"
    assert outcome["error"]["traceback"].startswith("Traceback (most recent call last):")
    assert "raise ValueError(self.message)" in outcome["error"]["traceback"]


@pytest.mark.parametrize("display", ["Failing", "", "d" * 500])
def failure_displays_are_capped_like_the_sdk(release: ModuleType, sink: list[Any], display: str) -> None:
    message = "x" * 3000
    outcome = _host.execute("Failing", "v0.0", json.dumps(message).encode(), _task(display))

    error = repr(ValueError(message))[: 1024 - len(display or "None") - 1]
    assert outcome["display"] == f"{display}\n{error}"
    # At most 1024 characters; an empty display is measured as "None", like the SDK does.
    expected_length = {"Failing": 1024, "": 1020, "d" * 500: 1024}[display]
    assert len(outcome["display"]) == expected_length


@pytest.mark.parametrize("display", ["é" * 1024, "e" * 1023, "🦀" * 1030, "line one\n" + "f" * 1015])
def a_failure_of_a_task_with_a_long_display_keeps_its_reason(
    release: ModuleType, sink: list[Any], display: str
) -> None:
    # The SDK's bound (1024 - len(display) - 1) is zero or negative here: it would drop the
    # reason, or cut its last character and exceed the limit. The head of the display goes instead.
    outcome = _host.execute("Failing", "v0.0", json.dumps("kaboom").encode(), _task(display))

    reason = "ValueError('kaboom')"
    assert outcome["display"].endswith("\n" + reason)
    assert len(outcome["display"]) == 1024
    kept = 1024 - len(reason) - 1
    assert outcome["display"] == f"{display[-kept:]}\n{reason}"


def a_long_reason_and_a_long_display_share_the_limit(release: ModuleType, sink: list[Any]) -> None:
    # Both too long: the reason keeps half the limit, the display the rest (its tail).
    error = ValueError("x" * 3000)
    outcome = _host._failure("d" * 1000 + "end", error, workflow_error=True, progress=[])  # noqa: SLF001

    display = outcome["display"]
    assert len(display) == 1024
    assert display == "d" * (511 - 3) + "end\n" + repr(error)[:512]
    assert outcome["error"]["type"] == "ValueError"


def undecodable_input_fails_the_task_as_a_workflow_error(release: ModuleType, sink: list[Any]) -> None:
    outcome = _host.execute("Leaf", "v0.0", b'"abc"', _task("LeafStr"))
    assert outcome["workflow_error"] is True
    assert outcome["display"] == "LeafStr\nValidationError('Expected `int`, got `str`')"
    assert outcome["progress"] == []
    assert outcome["error"]["type"] == "ValidationError"


def subtask_serialisation_errors_fail_the_parent(release: ModuleType, sink: list[Any]) -> None:
    outcome = _host.execute("BadSubtask", "v0.0", b"", _task("BadSubtask"))
    assert outcome["workflow_error"] is True
    assert outcome["display"] == "BadSubtask\nTypeError('Objects of type builtins.object are not supported at $')"


@pytest.mark.parametrize(
    ("how", "kind", "reason"),
    [
        ("exit", "SystemExit", "SystemExit(3)"),
        ("interrupt", "KeyboardInterrupt", "KeyboardInterrupt()"),
        ("custom", "Custom", "Custom('mine')"),
        ("unprintable", "Unprintable", "Unprintable(<repr() failed>)"),
        ("surrogate", "ValueError", "ValueError('bad \\ud800 text')"),
        ("negative", "InvalidProgressError", "InvalidProgressError(\"progress 'p': amount -1 is negative\")"),
        (
            "fraction",
            "InvalidProgressError",
            "InvalidProgressError(\"progress 'p': the amount must be an int, got float\")",
        ),
        ("text", "InvalidProgressError", "InvalidProgressError(\"progress 'p': the amount must be an int, got str\")"),
        (
            "overflow",
            "InvalidProgressError",
            "InvalidProgressError(\"progress 'p': the total would be 18446744073709551616, above 2**64 - 1\")",
        ),
        ("label", "InvalidProgressError", "InvalidProgressError('a progress label must be a str, got int')"),
        (
            "poked",
            "InvalidProgressError",
            "InvalidProgressError(\"progress 'p': the total is not an int from 0 to 2**64 - 1\")",
        ),
        ("display-int", "InvalidDisplayError", 'InvalidDisplayError("the task\'s display must be a str, got int")'),
        (
            "display-surrogate",
            "InvalidDisplayError",
            'InvalidDisplayError("the task\'s display is not valid UTF-8 (lone surrogate at 2)")',
        ),
        (
            "display-long",
            "InvalidDisplayError",
            'InvalidDisplayError("the task\'s display is 1025 characters; the limit is 1024")',
        ),
        (
            "retries-huge",
            "ValueError",
            "ValueError('max_retries must be from 0 to 2**63 - 1, got 18446744073709551616')",
        ),
        ("retries-negative", "ValueError", "ValueError('max_retries must be from 0 to 2**63 - 1, got -1')"),
        ("retries-text", "TypeError", "TypeError('max_retries must be an int, got str')"),
    ],
)
def whatever_a_task_raises_or_leaves_invalid_is_its_workflow_error(
    release: ModuleType, sink: list[Any], how: str, kind: str, reason: str
) -> None:
    outcome = _host.execute("Hostile", "v0.0", json.dumps(how).encode(), _task("Hostile"))

    assert outcome["computed"] is False
    assert outcome["workflow_error"] is True
    assert outcome["display"] == f"Hostile\n{reason}"
    assert outcome["error"]["type"] == kind
    # Every string of the outcome encodes as UTF-8, so the host can read it.
    json.dumps(outcome, ensure_ascii=False).encode()
    # The valid progress is kept (refused amounts are not applied); a tracker poked into an
    # invalid state drops it all.
    assert outcome["progress"][:1] == ([] if how == "poked" else [("kept", 2, 0)])


def a_display_of_exactly_the_limit_is_accepted(release: ModuleType, sink: list[Any]) -> None:
    outcome = _host.execute("Hostile", "v0.0", b'"display-limit"', _task("Hostile"))
    assert outcome["computed"] is True
    assert outcome["display"] == "x" * 1024


def a_handed_display_over_the_limit_passes_unchanged(release: ModuleType, sink: list[Any]) -> None:
    outcome = _host.execute("Leaf", "v0.0", b"1", _task("y" * 2000))
    assert outcome["computed"] is True
    assert outcome["display"] == "y" * 2000


def unknown_identifiers_are_not_workflow_errors(release: ModuleType, sink: list[Any]) -> None:
    task = _task("VersionedOld")
    outcome = _host.execute("Versioned", "v1.3", b"", task)

    message = f"Task {task['id']} has unknown identifier TaskIdentifier(name='Versioned', version='v1.3')."
    assert outcome == {
        "computed": False,
        "display": "VersionedOld",
        "workflow_error": False,
        "progress": [],
        "error": {"type": "UnknownIdentifier", "message": message, "traceback": ""},
    }
    [record] = _logs(sink)
    assert (record["level"], record["message"], record["task_id"]) == ("ERROR", message, task["id"])
    assert record["fields"]["identifier"] == "TaskIdentifier(name='Versioned', version='v1.3')"


def concurrent_executions_keep_their_logs_apart(release: ModuleType, sink: list[Any]) -> None:
    tasks = {f"worker-{index}": _task() for index in range(6)}
    outcomes: dict[str, Any] = {}

    def run(name: str) -> None:
        outcomes[name] = _host.execute("Slow", "v0.0", json.dumps(name).encode(), tasks[name])

    threads = [threading.Thread(target=run, args=(name,)) for name in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(outcome["computed"] for outcome in outcomes.values())
    records = _logs(sink)
    assert len(records) == 6 * 5
    for record in records:
        assert record["task_id"] == tasks[record["message"]]["id"]


def without_a_sink_logs_go_to_stderr(release: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    _host.execute("Bound", "v0.0", b"", _task(task_id="11111111-2222-3333-4444-555555555555"))
    line = capsys.readouterr().err
    assert 'ERROR [task 11111111-2222-3333-4444-555555555555] shown stage="one" extra_field=true' in line


def current_task_carries_the_records_fields(release: ModuleType, sink: list[Any]) -> None:
    seen: dict[str, Any] = {}

    class Spy(release.Task):  # type: ignore[name-defined,misc]
        def execute(self, context: Any) -> None:
            record = context.current_task
            seen.update(
                id=record.id,
                job=(record.job.id, record.job.name, record.job.trace_parent),
                retry_count=record.retry_count,
                parent_id=record.parent_id,
                depends_on=record.depends_on,
                identifier=record.identifier,
                cache=context.job_cache,
                runner_context=context.runner_context,
            )

    release.runner.register(Spy)
    _host.load(f"{release.__name__}:runner")
    parent, dependency = uuid.uuid4(), uuid.uuid4()
    task = {**_task(), "retry_count": 2, "parent_id": str(parent), "depends_on": [str(dependency)]}
    assert _host.execute("Spy", "v0.0", b"", task)["computed"]

    assert seen["id"] == uuid.UUID(task["id"])
    assert seen["job"] == (uuid.UUID(JOB_ID), "job", task["job"]["trace_parent"])
    assert (seen["retry_count"], seen["parent_id"], seen["depends_on"]) == (2, parent, [dependency])
    assert (seen["identifier"].name, seen["identifier"].version) == ("Spy", "v0.0")
    seen["cache"]["k"] = b"v"
    assert release.runner.cache.group(JOB_ID)["k"] == b"v"
    with_same_context = seen["runner_context"]
    assert _host.execute("Spy", "v0.0", b"", task)["computed"]
    assert seen["runner_context"] is with_same_context


def tasks_of_different_jobs_in_a_row_see_their_own_job(release: ModuleType, sink: list[Any]) -> None:
    seen: list[tuple[Any, Any]] = []

    class JobSpy(release.Task):  # type: ignore[name-defined,misc]
        def execute(self, context: Any) -> None:
            context.job_cache["job"] = str(context.current_task.job.id).encode()
            seen.append((context.current_task.job.id, context.job_cache))

    release.runner.register(JobSpy)
    _host.load(f"{release.__name__}:runner")
    other = str(uuid.uuid4())
    jobs = [JOB_ID, JOB_ID, other, JOB_ID, "not-a-uuid", other]
    for job in jobs:
        task = _task()
        task["job"] = {**task["job"], "id": job}
        assert _host.execute("JobSpy", "v0.0", b"", task)["computed"]

    assert [job_id for job_id, _ in seen] == [
        uuid.UUID(JOB_ID),
        uuid.UUID(JOB_ID),
        uuid.UUID(other),
        uuid.UUID(JOB_ID),
        "not-a-uuid",
        uuid.UUID(other),
    ]
    for job in jobs:
        assert release.runner.cache.group(job)["job"] == job.encode()
