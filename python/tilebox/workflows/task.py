"""The `Task` base class and what happens when a task class is defined.

Each subclass is turned into a dataclass by its metaclass, which also validates `execute`, works
out the identifier and records whether the class itself defines `execute` ("executable": only such
classes can be registered on a runner, inherited `execute` does not count).
"""

import inspect
import typing
from abc import ABCMeta
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import Field, dataclass, field
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Any, dataclass_transform

from tilebox.workflows._serialization import deserialize_task, serialize_task
from tilebox.workflows.data import RunnerContext, TaskIdentifier

if TYPE_CHECKING:
    from tilebox.workflows.context import ExecutionContext, FutureTask, ProgressUpdate

__all__ = [
    "ExecutionContext",
    "FutureTask",
    "ProgressUpdate",
    "Task",
    "TaskMeta",
    "deserialize_task",
    "serialize_task",
]

META_ATTR = "__tilebox_task_meta__"


@dataclass
class TaskMeta:
    """What the metaclass worked out about a task class."""

    identifier: TaskIdentifier
    executable: bool

    @staticmethod
    def for_task(task: "type | Task") -> "TaskMeta":
        cls = task if isinstance(task, type) else type(task)
        meta = cls.__dict__.get(META_ATTR)
        if not isinstance(meta, TaskMeta):
            raise TypeError(f"{cls.__name__} is not a task!")
        return meta


class _TaskMetaclass(type):
    """Applies `dataclass`, validates `execute` and computes the identifier of every Task subclass."""

    def __new__(mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any], **kwargs: Any) -> type:
        cls: type = super().__new__(mcs, name, bases, attrs, **kwargs)
        if not bases:  # the Task base class itself
            return cls
        cls = dataclass(cls)

        base_execute = None
        for base in reversed(bases):
            base_execute = getattr(base, "execute", None)
            if base_execute is not None:
                break
        if base_execute is None:
            raise TypeError("Task classes need an execute method")

        executable = _validate_execute(name, attrs, inspect.signature(base_execute))
        try:
            identifier = _identifier_of(cls)
        except ValueError as error:  # class creation reports problems as TypeError
            raise TypeError(str(error)) from None
        type.__setattr__(cls, META_ATTR, TaskMeta(identifier, executable))
        return cls


class _ABCTaskMetaclass(ABCMeta, _TaskMetaclass):
    """Lets tasks also derive from abstract base classes (ABCMeta runs first)."""


def _validate_execute(class_name: str, attrs: dict[str, Any], expected: inspect.Signature) -> bool:
    """Check the class body's own `execute`; returns whether there is one (the executable rule)."""
    if "execute" not in attrs:
        return False
    execute = attrs["execute"]
    if getattr(execute, "__override__", False):
        return True  # explicitly marked with typing.override: trust it
    signature = inspect.signature(execute)
    if len(signature.parameters) != len(expected.parameters):
        raise TypeError(
            f"Expected a function signature of {class_name}.execute{expected}, but got {class_name}.execute{signature}!"
        )
    return_annotation = signature.return_annotation
    with suppress(NameError, TypeError):
        return_annotation = typing.get_type_hints(execute).get("return", return_annotation)
    if not _returns_nothing(return_annotation):
        raise TypeError(f"Expected {class_name}.execute{signature} to not have a return value!")
    return True


def _returns_nothing(annotation: Any) -> bool:
    """None, a missing annotation, `Awaitable[None]`-like types, or unions of these."""
    if annotation in (None, NoneType, "None", "Awaitable[None]", inspect.Signature.empty):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, UnionType):
        return all(_returns_nothing(member) for member in typing.get_args(annotation))
    if not isinstance(origin, type) or not issubclass(origin, Awaitable):
        return False
    args = typing.get_args(annotation)
    return bool(args) and args[-1] in (None, NoneType)


def _identifier_of(cls: type) -> TaskIdentifier:
    """`cls.identifier()` if the class has one, else `(class name, "v0.0")`, validated."""
    class_name = cls.__name__
    if hasattr(cls, "identifier"):
        try:
            name, version = cls.identifier()
        except TypeError as error:
            raise ValueError(
                f"Failed to invoke {class_name}.identifier(). Is it a staticmethod or classmethod without parameters?"
            ) from error
        except ValueError as error:
            raise ValueError(f"Expected {class_name}.identifier() to return a tuple of two strings") from error
        if not isinstance(name, str) or not isinstance(version, str):
            raise ValueError(f"Expected {class_name}.identifier() to return a tuple of two strings")
    else:
        name, version = class_name, "v0.0"
    return TaskIdentifier.from_name_and_version(name, version)


@dataclass_transform(field_specifiers=(Field, field))
@dataclass
class Task(metaclass=_ABCTaskMetaclass):
    """A Tilebox workflows task.

    Subclasses are dataclasses: declare the task's inputs as annotated fields. The identifier
    defaults to `(class name, "v0.0")`; define a `staticmethod`/`classmethod` `identifier()`
    returning `(name, "vMAJOR.MINOR")` to choose another.
    """

    # Annotations evaluated as the SDK's are: they show up in execute validation messages.
    def execute(self, context: "ExecutionContext") -> Awaitable[None] | None:
        """Run the task. A fresh instance and context are created for every execution."""

    def _serialize(self) -> bytes:
        return serialize_task(self)

    @classmethod
    def _deserialize(cls, task_input: bytes, context: RunnerContext | None = None) -> "Task":  # noqa: ARG003
        return deserialize_task(cls, task_input)


def __getattr__(name: str) -> Any:
    # The execution context lives in its own module; re-export it here like the official SDK does.
    if name in ("ExecutionContext", "FutureTask", "ProgressUpdate"):
        from tilebox.workflows import context  # noqa: PLC0415 -- avoids an import cycle

        return getattr(context, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
