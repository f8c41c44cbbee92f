"""Plain data types shared by the task runtime: identifiers, the running task's record, the
runner context and its (no-op) tracer."""

from __future__ import annotations

import re
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

__all__ = [
    "CurrentJob",
    "CurrentTask",
    "NoopSpan",
    "NoopWorkflowTracer",
    "ProgressIndicator",
    "RunnerContext",
    "TaskIdentifier",
]

_VERSION_PATTERN = re.compile(r"^v(\d+)\.(\d+)$")  # "vMAJOR.MINOR", as the SDKs and the server use
_MAX_NAME_LENGTH = 256


def parse_version(version: str) -> tuple[int, int]:
    """Major and minor of a `vMAJOR.MINOR` version string (Python `re.match` semantics)."""
    if match := _VERSION_PATTERN.match(version):
        return int(match.group(1)), int(match.group(2))
    raise ValueError(f"Invalid version string: {version}")


@dataclass(order=True, eq=True, unsafe_hash=True, frozen=True)
class TaskIdentifier:
    """The name and version a task class is registered and submitted under."""

    name: str
    version: str

    @classmethod
    def from_name_and_version(cls, name: str, version: str) -> TaskIdentifier:
        """Validate like the official SDK: name 1..256 characters, version `vMAJOR.MINOR`."""
        if name == "":
            raise ValueError("A task name is required")
        if len(name) > _MAX_NAME_LENGTH:
            raise ValueError("The task name is too long")
        parse_version(version)
        return cls(name=name, version=version)


@dataclass(order=True)
class ProgressIndicator:
    label: str | None
    total: int
    done: int


@dataclass
class CurrentJob:
    """The job the running task belongs to."""

    id: UUID | str
    name: str = ""
    trace_parent: str = ""


@dataclass
class CurrentTask:
    """The record of the running task, as the runner received it. `display` is writable."""

    id: UUID | str
    identifier: TaskIdentifier
    input: bytes = b""
    display: str | None = None
    job: CurrentJob = field(default_factory=lambda: CurrentJob(id=""))
    parent_id: UUID | str | None = None
    depends_on: list[UUID | str] = field(default_factory=list)
    retry_count: int = 0


class NoopSpan:
    """A span that records nothing (this runtime does not export traces itself)."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        pass

    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        pass

    def record_exception(self, exception: BaseException, attributes: dict[str, Any] | None = None) -> None:
        pass

    def set_status(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update_name(self, name: str) -> None:
        pass

    def is_recording(self) -> bool:
        return False


class NoopWorkflowTracer:
    """Stand-in for the SDK's `WorkflowTracer`: `with tracer.span("name") as span:` works."""

    @contextmanager
    def span(self, name: str, *args: Any, **kwargs: Any) -> Iterator[NoopSpan]:  # noqa: ARG002 -- the SDK's signature
        yield NoopSpan()

    start_as_current_span = span


class RunnerContext:
    """Process-level context shared by all task executions of one runner.

    Subclass it and pass the class as `Runner(context=...)` to give tasks shared resources; it is
    constructed once, with the tracer as first argument. Tasks may run concurrently on several
    threads, so subclasses must synchronise mutable state.
    """

    def __init__(self, tracer: Any = None, storage_locations: list[Any] | None = None) -> None:
        self.tracer = tracer if tracer is not None else NoopWorkflowTracer()
        self.storage_locations: MutableMapping[Any, Any] = {
            getattr(location, "id", index): location for index, location in enumerate(storage_locations or [])
        }

    def local_path(self, location: str) -> Path:
        return Path(location)

    def gcs_client(self, location: str) -> Any:
        raise NotImplementedError(_NO_OBJECT_STORES)

    def s3_client(self, location: str, region: str | None = None) -> Any:
        raise NotImplementedError(_NO_OBJECT_STORES)

    def azure_client(self, storage_account_resource_id: str, container: str) -> Any:
        raise NotImplementedError(_NO_OBJECT_STORES)


_NO_OBJECT_STORES = (
    "object store clients are not built into the in-process tilebox runtime; override this method in a "
    "RunnerContext subclass to create one"
)
