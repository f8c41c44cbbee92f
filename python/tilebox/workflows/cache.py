"""Job caches: byte storage shared by the tasks of one job.

`ExecutionContext.job_cache` is the runner's cache grouped by the job id. Tasks can run on several
threads at once, so every implementation makes single operations thread-safe (sequences such as
"check, then set" are not atomic).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from threading import RLock

__all__ = ["InMemoryCache", "JobCache", "LocalFileSystemCache", "NoCache", "NoCacheError"]

_NO_CACHE_HINT = "No cache configured! Specify a cache using the cache argument when instantiating the task runner."


class JobCache(ABC):
    """Cache shared by tasks belonging to the same job."""

    @abstractmethod
    def __contains__(self, key: str) -> bool: ...

    @abstractmethod
    def __setitem__(self, key: str, value: bytes) -> None: ...

    @abstractmethod
    def __getitem__(self, key: str) -> bytes: ...

    @abstractmethod
    def __iter__(self) -> Iterator[str]: ...

    @abstractmethod
    def group(self, key: str) -> JobCache: ...

    def items(self) -> Iterator[tuple[str, bytes]]:
        for key in self:
            yield key, self[key]


class NoCacheError(ValueError):
    """Raised by every access to `NoCache`."""


class NoCache(JobCache):
    """The cache a runner uses when none was configured: every access raises `NoCacheError`."""

    def __contains__(self, key: str) -> bool:
        raise NoCacheError(f"{key} is not cached: {_NO_CACHE_HINT}")

    def __setitem__(self, key: str, value: bytes) -> None:
        raise NoCacheError(f"Cannot save {key} with value of {len(value)} bytes: {_NO_CACHE_HINT} ")

    def __getitem__(self, key: str) -> bytes:
        raise NoCacheError(f"{key} is not cached: {_NO_CACHE_HINT}")

    def __iter__(self) -> Iterator[str]:
        raise NoCacheError(_NO_CACHE_HINT)

    def group(self, key: str) -> NoCache:  # noqa: ARG002 -- every group of no cache is no cache
        return self


class InMemoryCache(JobCache):
    """Nested dictionaries behind one lock shared by all groups.

    `/` in a key walks nested groups: reading and writing `a/b` needs group `a` to exist already
    (writing never creates groups, `group("a/b")` does). `in` only looks at this level's keys.
    """

    def __init__(self, *, _lock: RLock | None = None) -> None:
        self.cache: dict[str, bytes | InMemoryCache] = {}
        self._lock = _lock or RLock()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self.cache

    def __setitem__(self, key: str, value: bytes) -> None:
        with self._lock:
            parent, name = self._resolve(key, create_missing=False)
            parent.cache[name] = value

    def __getitem__(self, key: str) -> bytes:
        with self._lock:
            parent, name = self._resolve(key, create_missing=False)
            item = parent.cache[name]
            if not isinstance(item, bytes):
                raise KeyError(f"{name} is not cached!")
            return item

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter([key for key, value in self.cache.items() if isinstance(value, bytes)])

    def group(self, key: str) -> InMemoryCache:
        with self._lock:
            parent, name = self._resolve(key, create_missing=True)
            group = parent.cache.get(name)
            if group is None:
                group = InMemoryCache(_lock=self._lock)
                parent.cache[name] = group
            if not isinstance(group, InMemoryCache):
                # The key holds a value: hand out an empty, unattached group.
                return InMemoryCache(_lock=self._lock)
            return group

    def _resolve(self, key: str, create_missing: bool) -> tuple[InMemoryCache, str]:
        """The group holding `key`'s last segment, and that segment."""
        *parents, name = key.split("/")
        group = self
        for part in parents:
            child = group.cache.get(part)
            if child is None:
                if not create_missing:
                    raise KeyError(f"{part} is not cached!")
                child = InMemoryCache(_lock=self._lock)
                group.cache[part] = child
            if not isinstance(child, InMemoryCache):
                raise KeyError(f"{part} is not cached!")
            group = child
        return group, name


class LocalFileSystemCache(JobCache):
    """Files under `root` (default `./cache`, relative to the working directory).

    A key is a path below the group's directory; parent directories are created on write.
    """

    def __init__(self, root: Path | str = Path("cache")) -> None:
        self.root = Path(root)

    def __contains__(self, key: str) -> bool:
        return (self.root / key).exists()

    def __setitem__(self, key: str, value: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value)

    def __getitem__(self, key: str) -> bytes:
        path = self.root / key
        if not path.is_file():
            raise KeyError(f"{key} is not cached!")
        return path.read_bytes()

    def __iter__(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        yield from sorted(str(path.relative_to(self.root)) for path in self.root.iterdir() if path.is_file())

    def group(self, key: str) -> LocalFileSystemCache:
        return LocalFileSystemCache(self.root / key)
