"""msgspec's error classes, and the pieces of its messages shared by the modules."""

from __future__ import annotations

from typing import Any

__all__ = ["DecodeError", "MsgspecError", "ValidationError"]


class MsgspecError(Exception):
    """Base class of the errors below (named after msgspec's hierarchy)."""


class DecodeError(MsgspecError, ValueError):
    """The input is not valid JSON (or ends too early)."""


class ValidationError(DecodeError):
    """The input is valid JSON but does not match the expected type."""


# A path is a tuple of segments: a field name (str), a list index (int), _KEY or _VALUE.
Path = tuple[Any, ...]
_KEY = object()
_VALUE = object()


def _path_suffix(path: Path) -> str:
    """msgspec's ` - at `$.a[0]`` suffix (empty at the root)."""
    if not path:
        return ""
    groups: list[str] = []
    current = "`$"
    for segment in path:
        if segment is _KEY:
            groups.append(current + "`")
            current = "`key"
        elif segment is _VALUE:
            current += "[...]"
        elif isinstance(segment, int):
            current += f"[{segment}]"
        else:
            current += f".{segment}"
    groups.append(current + "`")
    return " - at " + " in ".join(reversed(groups))


def _invalid(message: str, path: Path) -> ValidationError:
    return ValidationError(f"{message}{_path_suffix(path)}")


def _hook_error(error: Exception, path: Path) -> ValidationError | None:
    """The ValidationError a TypeError/ValueError from user code becomes (others propagate as is)."""
    if isinstance(error, (TypeError, ValueError)) and not isinstance(error, DecodeError):
        return ValidationError(f"{error}{_path_suffix(path)}")
    return None


def _type_name(cls: type) -> str:
    """CPython's `tp_name`: the bare name for classes defined in Python, dotted for C types."""
    if cls.__module__ == "builtins" or "__module__" in cls.__dict__:
        return cls.__name__
    return f"{cls.__module__}.{cls.__name__}"
