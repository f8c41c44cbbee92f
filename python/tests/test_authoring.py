"""Task authoring rules: dataclass conversion, identifiers, `execute` validation, registration,
the execution context (subtasks, progress) and the job caches."""

from __future__ import annotations

import threading
import typing
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Coroutine
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest

from tilebox.workflows import ExecutionContext, Runner, Task, TaskIdentifier, TaskMeta
from tilebox.workflows._logging import StructuredLogger, task_logger
from tilebox.workflows.cache import InMemoryCache, JobCache, LocalFileSystemCache, NoCache, NoCacheError
from tilebox.workflows.context import FutureTask
from tilebox.workflows.data import CurrentTask


def _context() -> ExecutionContext:
    record = CurrentTask(id="task", identifier=TaskIdentifier("Root", "v0.0"), display="Root")
    return ExecutionContext(record, NoCache(), StructuredLogger(task_logger))


# ---- tasks are dataclasses ----------------------------------------------------------------------


def task_classes_become_dataclasses() -> None:
    class Point(Task):
        x: int
        y: int = 2
        tags: list[str] = field(default_factory=list)
        limit: typing.ClassVar[int] = 5

    assert Point(1) == Point(x=1, y=2, tags=[])
    assert repr(Point(1, 3)).endswith("Point(x=1, y=3, tags=[])")
    assert Point(1).tags is not Point(1).tags
    assert [name for name in Point.__dataclass_fields__ if name != "limit"] == ["x", "y", "tags"]


def a_required_field_after_a_default_one_fails_at_class_creation() -> None:
    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):

        class Broken(Task):
            a: int = 1
            b: int  # type: ignore[misc]  # the error under test


def inherited_fields_come_first() -> None:
    class Parent(Task):
        a: int

    class Kid(Parent):
        b: str = "x"

    assert repr(Kid(1)).endswith("Kid(a=1, b='x')")


# ---- identifiers --------------------------------------------------------------------------------


def the_default_identifier_is_the_class_name_and_v0_0() -> None:
    class Plain(Task):
        pass

    assert TaskMeta.for_task(Plain).identifier == TaskIdentifier("Plain", "v0.0")
    assert TaskMeta.for_task(Plain()).identifier == TaskIdentifier("Plain", "v0.0")


def identifiers_come_from_a_staticmethod_or_classmethod() -> None:
    class Static(Task):
        @staticmethod
        def identifier() -> tuple[str, str]:
            return "tilebox.com/static", "v2.1"

    class Klass(Task):
        @classmethod
        def identifier(cls) -> tuple[str, str]:
            return f"{cls.__name__}-named", "v01.002"

    assert TaskMeta.for_task(Static).identifier == TaskIdentifier("tilebox.com/static", "v2.1")
    assert TaskMeta.for_task(Klass).identifier == TaskIdentifier("Klass-named", "v01.002")


def an_instance_method_identifier_fails_at_class_creation() -> None:
    with pytest.raises(TypeError, match=r"Failed to invoke Bad.identifier\(\). Is it a staticmethod or classmethod"):

        class Bad(Task):
            def identifier(self) -> tuple[str, str]:
                return "x", "v1.0"


@pytest.mark.parametrize("returned", [("only-one",), ("a", "v1.0", "extra"), ("a", 1)])
def identifiers_must_be_two_strings(returned: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError, match=r"Expected Bad.identifier\(\) to return a tuple of two strings"):

        class Bad(Task):
            @staticmethod
            def identifier() -> tuple[Any, ...]:
                return returned


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("x", "1.2", "Invalid version string: 1.2"),
        ("x", "v1.2.3", "Invalid version string: v1.2.3"),
        ("x", "", "Invalid version string: "),
        ("x", "v1", "Invalid version string: v1"),
        ("", "v1.0", "A task name is required"),
        ("n" * 257, "v1.0", "The task name is too long"),
    ],
)
def invalid_identifiers_fail_at_class_creation(name: str, version: str, message: str) -> None:
    with pytest.raises(TypeError) as raised:

        class Bad(Task):
            @staticmethod
            def identifier() -> tuple[str, str]:
                return name, version

    assert str(raised.value) == message


@pytest.mark.parametrize("version", ["v0.0", "v10.20", "v01.002", "v1.0\n"])
def valid_versions_follow_python_re_match(version: str) -> None:
    class Fine(Task):
        @staticmethod
        def identifier() -> tuple[str, str]:
            return "n" * 256, version

    assert TaskMeta.for_task(Fine).identifier.version == version


def subclasses_inherit_the_identifier_method() -> None:
    class Parent(Task):
        @staticmethod
        def identifier() -> tuple[str, str]:
            return "shared", "v1.0"

    class Kid(Parent):
        def execute(self, context: ExecutionContext) -> None:
            pass

    assert TaskMeta.for_task(Kid).identifier == TaskIdentifier("shared", "v1.0")


# ---- execute validation and the executable rule -------------------------------------------------


def execute_must_take_exactly_self_and_context() -> None:
    with pytest.raises(TypeError) as raised:

        class Bad(Task):
            def execute(self, context: ExecutionContext, extra: int) -> None:  # type: ignore[override]  # under test
                pass

    assert str(raised.value) == (
        "Expected a function signature of Bad.execute(self, context: 'ExecutionContext') -> "
        "collections.abc.Awaitable[None] | None, "
        "but got Bad.execute(self, context: 'ExecutionContext', extra: 'int') -> 'None'!"
    )


def execute_must_not_return_a_value() -> None:
    with pytest.raises(TypeError) as raised:

        class Bad(Task):
            def execute(self, context: ExecutionContext) -> int:  # type: ignore[override]  # noqa: ARG002 -- under test
                return 1

    assert (
        str(raised.value)
        == "Expected Bad.execute(self, context: 'ExecutionContext') -> 'int' to not have a return value!"
    )


@pytest.mark.parametrize(
    "annotation",
    [None, "None", "Awaitable[None]", Awaitable[None], Coroutine[Any, Any, None], Awaitable[None] | None],
)
def execute_may_return_nothing_or_an_awaitable_of_nothing(annotation: Any) -> None:
    def execute(self: Any, context: Any) -> None:
        pass

    execute.__annotations__["return"] = annotation
    cls = type("Fine", (Task,), {"execute": execute, "__module__": __name__})
    assert TaskMeta.for_task(cls).executable


def async_execute_and_override_marked_execute_are_accepted() -> None:
    class Async(Task):
        async def execute(self, context: ExecutionContext) -> None:
            pass

    class Overridden(Task):
        @typing.override
        def execute(self, context: ExecutionContext, whatever: int = 0) -> int:  # type: ignore[override]
            return 1

    assert TaskMeta.for_task(Async).executable
    assert TaskMeta.for_task(Overridden).executable


def only_classes_defining_execute_themselves_are_executable() -> None:
    class Parent(Task):
        def execute(self, context: ExecutionContext) -> None:
            pass

    class Kid(Parent):
        pass

    class Stub(Task):
        n: int

    assert TaskMeta.for_task(Parent).executable
    assert not TaskMeta.for_task(Kid).executable
    assert not TaskMeta.for_task(Stub).executable


def tasks_can_also_derive_from_abstract_base_classes() -> None:
    class Describable(ABC):
        @abstractmethod
        def describe(self) -> str: ...

    class Described(Task, Describable):
        name: str

        def describe(self) -> str:
            return self.name

        def execute(self, context: ExecutionContext) -> None:
            pass

    assert Described("x").describe() == "x"
    assert TaskMeta.for_task(Described).executable


# ---- runner registration ------------------------------------------------------------------------


def runners_keep_registration_order_and_allow_several_versions() -> None:
    class First(Task):
        def execute(self, context: ExecutionContext) -> None:
            pass

    class SecondV1(Task):
        @staticmethod
        def identifier() -> tuple[str, str]:
            return "Second", "v1.0"

        def execute(self, context: ExecutionContext) -> None:
            pass

    class SecondV2(Task):
        @staticmethod
        def identifier() -> tuple[str, str]:
            return "Second", "v2.0"

        def execute(self, context: ExecutionContext) -> None:
            pass

    runner = Runner(tasks=[SecondV2, First, SecondV1])
    assert runner.task_identifiers == [
        TaskIdentifier("Second", "v2.0"),
        TaskIdentifier("First", "v0.0"),
        TaskIdentifier("Second", "v1.0"),
    ]
    assert runner.tasks_by_identifier[TaskIdentifier("First", "v0.0")] is First


def registering_a_task_without_its_own_execute_fails() -> None:
    class Parent(Task):
        def execute(self, context: ExecutionContext) -> None:
            pass

    class Kid(Parent):
        pass

    class Renamed(Parent):
        @staticmethod
        def identifier() -> tuple[str, str]:
            return "custom", "v1.0"

    with pytest.raises(ValueError) as raised:  # noqa: PT011 -- the whole message is compared below
        Runner(tasks=[Kid])
    assert str(raised.value) == (
        "Task Kid is not executable. It must have an execute method in order to register it with a task runner."
    )
    with pytest.raises(ValueError, match=r"^Task Renamed \(custom\) is not executable"):
        Runner(tasks=[Renamed])


def registering_the_same_identifier_twice_fails() -> None:
    class One(Task):
        @staticmethod
        def identifier() -> tuple[str, str]:
            return "same", "v1.2"

        def execute(self, context: ExecutionContext) -> None:
            pass

    class Two(Task):
        @staticmethod
        def identifier() -> tuple[str, str]:
            return "same", "v1.2"

        def execute(self, context: ExecutionContext) -> None:
            pass

    with pytest.raises(ValueError) as raised:  # noqa: PT011 -- the whole message is compared below
        Runner(tasks=[One, Two])
    assert str(raised.value) == "Duplicate task identifier: A task 'same' with version 'v1.2' is already registered."


def registering_something_that_is_not_a_task_fails() -> None:
    with pytest.raises(TypeError, match="int is not a task!"):
        Runner(tasks=[int])  # type: ignore[list-item]


def the_official_import_paths_work() -> None:
    from tilebox.workflows import Job, RunnerContext  # noqa: PLC0415
    from tilebox.workflows.observability.logging import get_logger  # noqa: PLC0415
    from tilebox.workflows.task import ExecutionContext as FromTask  # noqa: PLC0415
    from tilebox.workflows.task import FutureTask as FutureFromTask  # noqa: PLC0415

    assert FromTask is ExecutionContext
    assert FutureFromTask is FutureTask
    assert Job(id="j").name == ""
    assert RunnerContext().local_path("x") == Path("x")
    assert get_logger("named").name == "tilebox.workflows.tasks.named"


def the_client_explains_that_it_is_not_available() -> None:
    from tilebox.workflows import Client  # noqa: PLC0415

    with pytest.raises(NotImplementedError, match="tilebox runner start"):
        Client()


# ---- submitting subtasks ------------------------------------------------------------------------


class _Leaf(Task):
    n: int = 0

    def execute(self, context: ExecutionContext) -> None:
        pass


def submitted_subtasks_get_their_position_and_dependencies() -> None:
    context = _context()
    first = context.submit_subtask(_Leaf(1))
    second = context.submit_subtask(_Leaf(2), depends_on=first, cluster="gpu", max_retries=2, optional=True)
    third = context.submit_subtask(_Leaf(3), depends_on=[first, second])

    assert first == FutureTask(0, _Leaf(1), [], None, 0, False)
    assert second == FutureTask(1, _Leaf(2), [0], "gpu", 2, True)
    assert third.index == 2
    assert third.depends_on == [0, 1]


def submit_subtasks_gives_every_task_the_same_options() -> None:
    context = _context()
    root = context.submit_subtask(_Leaf())
    futures = context.submit_subtasks([_Leaf(1), _Leaf(2)], depends_on=root, cluster="c", max_retries=1)
    assert [(future.index, future.depends_on, future.cluster, future.max_retries) for future in futures] == [
        (1, [0], "c", 1),
        (2, [0], "c", 1),
    ]


def submit_batch_is_deprecated() -> None:
    context = _context()
    with pytest.warns(DeprecationWarning, match="submit_batch is deprecated, use submit_subtasks instead"):
        futures = context.submit_batch([_Leaf(1)], cluster="c", max_retries=4)
    assert (futures[0].cluster, futures[0].max_retries) == ("c", 4)


def dependencies_must_be_a_future_task_or_a_list_of_them() -> None:
    context = _context()
    first = context.submit_subtask(_Leaf())
    with pytest.raises(TypeError) as raised:
        context.submit_subtask(_Leaf(), depends_on=(first,))  # type: ignore[arg-type]
    assert str(raised.value) == "Invalid dependency. Expected FutureTask or list[FutureTask], got <class 'tuple'>"
    with pytest.raises(TypeError) as raised:
        context.submit_subtask(_Leaf(), depends_on=[first, 0])  # type: ignore[list-item]
    assert str(raised.value) == "Invalid dependency. Expected FutureTask, got <class 'int'>"


def dependencies_must_have_been_submitted_before() -> None:
    context, other = _context(), _context()
    for _ in range(3):
        other.submit_subtask(_Leaf())
    late = other.submit_subtask(_Leaf())
    first = context.submit_subtask(_Leaf())

    with pytest.raises(ValueError, match=r"^Dependent task 3 does not exist$"):
        context.submit_subtask(_Leaf(), depends_on=late)
    # Only the index is checked: a small index from another context is accepted, like the SDK.
    assert context.submit_subtask(_Leaf(), depends_on=FutureTask(0, _Leaf(), [], None, 0, False)).depends_on == [0]
    assert first.index == 0


def subtask_inputs_are_serialised_when_merged() -> None:
    from tilebox.workflows._submissions import merge_future_tasks  # noqa: PLC0415

    context = _context()
    leaf = _Leaf(1)
    context.submit_subtask(leaf, cluster="")
    leaf.n = 99  # changed after submitting: the SDK sends what the task holds when execute returns
    merged = merge_future_tasks(context._sub_tasks, "fallback")  # noqa: SLF001
    assert merged is not None
    assert merged["task_groups"][0]["inputs"] == [b"99"]
    assert merged["cluster_slug_lookup"] == ["fallback"]
    assert merge_future_tasks([], "fallback") is None


# ---- progress -----------------------------------------------------------------------------------


def progress_returns_the_same_tracker_per_label() -> None:
    context = _context()
    tracker = context.progress("items")
    tracker.add(4)
    context.progress("items").done(3)
    context.progress("").add(1)
    context.progress().done(1)

    assert context.progress("items") is tracker
    assert context.progress("") is context.progress(None)
    assert context.progress_snapshot() == [("items", 4, 3), (None, 1, 1)]


def more_than_a_thousand_and_one_progress_trackers_fail() -> None:
    context = _context()
    for index in range(1001):
        context.progress(f"label-{index}")
    context.progress("label-0")  # existing labels still work
    with pytest.raises(ValueError, match=r"^Cannot create more than 1000 progress indicators per task\.$"):
        context.progress("one-too-many")
    assert len(context.progress_snapshot()) == 1001


# ---- caches -------------------------------------------------------------------------------------


def no_cache_refuses_every_access() -> None:
    cache = NoCache()
    hint = "No cache configured! Specify a cache using the cache argument when instantiating the task runner."
    with pytest.raises(NoCacheError) as raised:
        _ = cache["key"]
    assert str(raised.value) == f"key is not cached: {hint}"
    with pytest.raises(NoCacheError, match=r"^Cannot save key with value of 3 bytes: "):
        cache["key"] = b"abc"
    with pytest.raises(NoCacheError):
        _ = "key" in cache
    with pytest.raises(NoCacheError):
        list(cache)
    assert cache.group("job") is cache
    assert issubclass(NoCacheError, ValueError)


def in_memory_cache_resolves_slashes_through_existing_groups() -> None:
    cache = InMemoryCache()
    with pytest.raises(KeyError) as raised:
        cache["a/b"] = b"x"
    assert raised.value.args == ("a is not cached!",)

    group = cache.group("a/b")
    cache["a/b/c"] = b"value"
    assert group["c"] == b"value"
    assert cache.group("a").group("b") is group
    assert cache["a/b/c"] == b"value"
    assert "a/b/c" not in cache  # `in` only looks at this level
    assert "a" in cache  # a group counts


def in_memory_cache_reads_only_values() -> None:
    cache = InMemoryCache()
    cache["top"] = b"1"
    cache.group("sub")["inner"] = b"2"

    assert list(cache) == ["top"]
    assert dict(cache.items()) == {"top": b"1"}
    with pytest.raises(KeyError, match="sub is not cached!"):
        _ = cache["sub"]
    with pytest.raises(KeyError):
        _ = cache["missing"]
    with pytest.raises(KeyError, match="top is not cached!"):
        _ = cache["top/x"]
    detached = cache.group("top")  # a value, not a group: an unrelated empty group
    assert list(detached) == []
    detached["y"] = b"3"
    assert cache["top"] == b"1"


def in_memory_cache_is_safe_to_share_between_threads() -> None:
    cache = InMemoryCache()

    def write(worker: int) -> None:
        group = cache.group(f"job/{worker % 3}")
        for index in range(200):
            group[f"{worker}-{index}"] = str(index).encode()

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(len(list(cache.group(f"job/{group}"))) for group in range(3)) == 9 * 200


def local_file_system_cache_defaults_to_cache_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cache = LocalFileSystemCache()
    assert cache.root == Path("cache")

    job = cache.group("job-id")
    job["a/b/c"] = b"deep"
    job["top"] = b"flat"

    assert (tmp_path / "cache" / "job-id" / "a" / "b" / "c").read_bytes() == b"deep"
    assert (tmp_path / "cache" / "job-id" / "top").read_bytes() == b"flat"
    assert list(job) == ["top"]
    assert "a" in job  # a directory counts
    assert "a/b/c" in job
    with pytest.raises(KeyError, match="a is not cached!"):
        _ = job["a"]
    assert job["a/b/c"] == b"deep"
    assert job.group("a").group("b")["c"] == b"deep"
    assert list(cache.group("never-written")) == []
    with pytest.raises(KeyError):
        _ = job["missing"]


def every_cache_is_a_job_cache() -> None:
    for cache in (NoCache(), InMemoryCache(), LocalFileSystemCache("unused")):
        assert isinstance(cache, JobCache)
