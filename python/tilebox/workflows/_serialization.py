"""Task input (de)serialisation, byte-compatible with the official SDK 0.66.0.

Envelope (by the number of fields without `skip_serialization` metadata):

* none: `b""`, and decoding ignores the input;
* one: the field's value encoded on its own (raw protobuf bytes if the value has
  `SerializeToString`), decoded against the field's annotation and passed to the constructor;
* two or more: a JSON object in field order, decoded straight into the class (`__init__` is
  bypassed, `__post_init__` runs, unknown keys are ignored, missing fields take their defaults).

Like the SDK, values are first "prepared" against their annotations: an annotated `datetime`
(also inside containers, unions and nested dataclasses) is written with `isoformat()` (`+00:00`,
not msgspec's `Z`), and a nested dataclass that has `skip_serialization` fields or datetimes is
turned into a dict of its remaining fields. Everything else is encoded by `_json` directly.
"""

from __future__ import annotations

import base64
import contextlib
import sys
import threading
import typing
from dataclasses import fields, is_dataclass
from datetime import datetime
from pathlib import PurePath
from types import NoneType, UnionType
from typing import Any
from zoneinfo import ZoneInfo

from tilebox.workflows import _json

__all__ = [
    "InputError",
    "decode_json",
    "deserialize_task",
    "encode_input",
    "encode_log_value",
    "normalize_log_value",
    "serialize_task",
]

_SKIP = "skip_serialization"


def _included_fields(task_or_class: Any) -> list[Any]:
    return [field for field in fields(task_or_class) if not field.metadata.get(_SKIP, False)]


def serialize_task(task: Any) -> bytes:
    """The input bytes the official SDK would submit for `task`."""
    if not is_dataclass(task):
        raise TypeError("Cannot serialize the given task - did you inherit from Task?")
    included = _included_fields(task)
    if not included:
        return b""
    if len(included) == 1:
        value = getattr(task, included[0].name)
        if hasattr(value, "SerializeToString"):
            data: bytes = value.SerializeToString()
            return data
        annotation = _type_hints(type(task)).get(included[0].name, included[0].type)
        return _encode(_prepare(annotation, value), value)
    hints = _type_hints(type(task))
    prepared = {
        field.name: _prepare(hints.get(field.name, field.type), getattr(task, field.name)) for field in included
    }
    return _encode(prepared, task)


def deserialize_task[T](cls: type[T], data: bytes) -> T:
    """Build a task instance of `cls` from input bytes, like the official SDK."""
    included = _included_fields(cls)
    if not included:
        return cls()
    if len(included) == 1:
        name = included[0].name
        annotation = typing.get_type_hints(cls, include_extras=True).get(name, included[0].type)
        message_type = _unwrap_optional(annotation)
        if hasattr(message_type, "FromString"):
            value = None if data == b"null" else message_type.FromString(data)
        else:
            value = decode_json(data, annotation)
        return cls(**{name: value})
    task: T = decode_json(data, cls)
    return task


# ---- encoding ---------------------------------------------------------------------------------------


def _protobuf_message_type() -> type | None:
    """`google.protobuf.message.Message` if protobuf is loaded (values can only be messages then)."""
    module = sys.modules.get("google.protobuf.message")
    return getattr(module, "Message", None)


def _is_message(value: Any) -> bool:
    message_type = _protobuf_message_type()
    return message_type is not None and isinstance(value, message_type)


def _is_message_type(annotation: Any) -> bool:
    message_type = _protobuf_message_type()
    return message_type is not None and isinstance(annotation, type) and issubclass(annotation, message_type)


def _encode_hook(value: Any) -> Any:
    if _is_message(value):  # nested protobuf messages are base64 strings
        return base64.b64encode(value.SerializeToString()).decode("ascii")
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, ZoneInfo):
        return value.key
    raise NotImplementedError(f"Objects of type {type(value).__module__}.{type(value).__qualname__} are not supported")


def _encode(prepared: Any, original: Any) -> bytes:
    try:
        return _json.encode(prepared, _encode_hook)
    except (TypeError, NotImplementedError):
        _raise_with_path(original, "$")
        raise


def _raise_with_path(value: Any, path: str) -> None:
    """Find the first value below `value` that cannot be encoded and name its JSON path."""
    if _is_message(value):
        return
    if is_dataclass(value) and not isinstance(value, type):
        for field in _included_fields(value):
            _raise_with_path(getattr(value, field.name), f"{path}.{field.name}")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _raise_with_path(item, f"{path}.{key}")
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            _raise_with_path(item, f"{path}[{index}]")
        return
    try:
        _json.encode(value, _encode_hook)
    except (TypeError, NotImplementedError) as error:
        raise TypeError(f"{error} at {path}") from error


_hints_cache: dict[type, dict[str, Any]] = {}
_needs_prepare_cache: dict[Any, bool] = {}
_cache_lock = threading.Lock()


def _type_hints(cls: type) -> dict[str, Any]:
    hints = _hints_cache.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        with _cache_lock:
            _hints_cache[cls] = hints
    return hints


def _needs_prepare(annotation: Any) -> bool:
    """Whether values of this annotation must be rewritten before JSON encoding (see module doc)."""
    try:
        return _needs_prepare_cache[annotation]
    except KeyError:
        result = _needs_prepare_inner(annotation, frozenset())
        with _cache_lock:
            _needs_prepare_cache[annotation] = result
        return result
    except TypeError:  # unhashable annotation
        return _needs_prepare_inner(annotation, frozenset())


def _needs_prepare_inner(annotation: Any, seen: frozenset[Any]) -> bool:  # noqa: PLR0911
    try:
        if annotation in seen:
            return False
        seen |= {annotation}
    except TypeError:
        pass
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _needs_prepare_inner(args[0], seen)
    if origin in (typing.Union, UnionType, list, tuple, dict, set, frozenset):
        return any(arg is not Ellipsis and _needs_prepare_inner(arg, seen) for arg in args)
    if not isinstance(annotation, type):
        return False
    if issubclass(annotation, datetime):
        return True
    if not is_dataclass(annotation):
        return False
    return any(field.metadata.get(_SKIP, False) for field in fields(annotation)) or any(
        _needs_prepare_inner(hint, seen) for hint in _type_hints(annotation).values()
    )


def _prepare(annotation: Any, value: Any) -> Any:  # noqa: C901, PLR0911
    if not _needs_prepare(annotation):
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _prepare(args[0], value)
    if origin in (typing.Union, UnionType):
        if value is None:
            return None
        member = next((member for member in args if _matches(member, value)), None)
        return _prepare(member, value) if member is not None else value
    if isinstance(annotation, type):
        if is_dataclass(annotation):
            hints = _type_hints(annotation)
            return {
                field.name: _prepare(hints.get(field.name, field.type), getattr(value, field.name))
                for field in _included_fields(value)
            }
        if issubclass(annotation, datetime):
            return value.isoformat()
    if origin in (list, set, frozenset) and len(args) == 1:
        return [_prepare(args[0], item) for item in value]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return [_prepare(args[0], item) for item in value]
        return [_prepare(item_type, item) for item_type, item in zip(args, value, strict=True)]
    if origin is dict and len(args) == 2:
        return {key: _prepare(args[1], item) for key, item in value.items()}
    return value


def _matches(annotation: Any, value: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _matches(typing.get_args(annotation)[0], value)
    if origin in (list, tuple, dict, set, frozenset):
        return isinstance(value, origin)
    return isinstance(annotation, type) and isinstance(value, annotation)


# ---- decoding ---------------------------------------------------------------------------------------


def _decode_hook(annotation: type, value: Any) -> Any:
    if _is_message_type(annotation):
        message_type: Any = annotation  # a protobuf message class (untyped: protobuf is optional)
        return message_type.FromString(base64.b64decode(value))
    if issubclass(annotation, PurePath):
        return annotation(value)
    if annotation is ZoneInfo:
        return ZoneInfo(value)
    raise NotImplementedError(f"Objects of type {annotation.__module__}.{annotation.__qualname__} are not supported")


_decoders: dict[Any, _json.Decoder] = {}


def decode_json(data: bytes, annotation: Any) -> Any:
    """Typed decode with msgspec's strict rules (see `_json.Decoder`)."""
    try:
        decoder = _decoders.get(annotation)
    except TypeError:  # unhashable annotation
        return _json.Decoder(annotation, _decode_hook).decode(data)
    if decoder is None:
        decoder = _json.Decoder(annotation, _decode_hook)
        with _cache_lock:
            _decoders[annotation] = decoder
    return decoder.decode(data)


def _unwrap_optional(annotation: Any) -> Any:
    """`Optional[X]`, `X | None` and `Annotated[X, ...]` all mean X when looking for `FromString`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, UnionType):
        args = typing.get_args(annotation)
        if len(args) == 2 and args[-1] is NoneType:
            return _unwrap_optional(args[0])
    if origin is typing.Annotated:
        args = typing.get_args(annotation)
        if args:
            return _unwrap_optional(args[0])
    return annotation


# ---- log attributes ---------------------------------------------------------------------------------

_ANY_DECODER = _json.Decoder()


def normalize_log_value(value: Any) -> Any:
    """A log attribute value as JSON primitives (datetimes as ISO strings, unknowns as `str()`)."""
    if type(value) in (str, bool, int, float, NoneType):
        return value
    return _ANY_DECODER.decode(encode_log_value(value))


def encode_log_value(value: Any) -> bytes:
    """Best-effort JSON for a log value: never fails, falls back to `str()` or a placeholder."""
    try:
        return _json.encode(_prepare_log_value(value), _encode_hook)
    except Exception:  # noqa: BLE001 -- logging must not fail the task
        try:
            fallback = str(value)
        except Exception:  # noqa: BLE001 -- even __str__ can fail
            fallback = f"<unserializable {type(value).__name__}>"
        return _json.encode(fallback.encode("utf-8", errors="replace").decode("utf-8"))


def _prepare_log_value(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {field.name: _prepare_log_value(getattr(value, field.name)) for field in _included_fields(value)}
    if isinstance(value, dict):
        return {str(key): _prepare_log_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_prepare_log_value(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# ---- task inputs typed by hand (`tilebox task run --input`) -----------------------------------


class InputError(ValueError):
    """An input given as JSON that does not fit the task; the message names the task and fields."""


def encode_input(cls: type, text: str) -> bytes:  # noqa: C901 -- one branch per input form, in order
    """The input bytes a submission of the task `cls` described by `text` would carry.

    `text` is JSON: an object of the task's fields (`{"field": value, ...}`, any task), or for a
    task of exactly one field its wire form (the field's value alone, e.g. `1` or `"S2A"`). Empty
    text is no input for a task without fields, and the empty string otherwise (the CLI sends
    text that is not JSON as a JSON string). The task is built (its constructor runs, nested
    dataclasses get their defaults, as `Opts()` would) and encoded by its own `_serialize()`, the
    way a submission encodes it.

    Objects are strict: an unknown key, at the top or inside a field whose type is a dataclass,
    raises `InputError` naming the task, the key's path (`options.limt`) and the fields expected
    there. For a one-field task, an object is read as the object of its fields if its keys are
    field names; otherwise, or if that does not fit, as the field's value alone, strictly too: a
    typo in either form is an error, never a value with defaults.
    """
    task_name = cls.__qualname__
    included = _included_fields(cls)
    names = [field.name for field in included]
    expected = ", ".join(names) if names else "none"
    if not text.strip():
        if not included:
            return _submitted(cls())
        text = '""'
    data = text.encode("utf-8")
    try:
        value = _json.Decoder().decode(data)
    except _json.MsgspecError as error:
        raise InputError(f"input for task {task_name} is not JSON: {error}") from None
    if not included:
        if value == {}:
            return _submitted(cls())
        raise InputError(f"task {task_name} takes no input (it has no fields), but got {text!r}")
    if isinstance(value, dict) and all(key in names for key in value):
        try:
            return _submitted(_build(cls, value, included))
        except InputError:
            # A one-field task's value may itself be an object whose keys are field names.
            if len(included) == 1:
                with contextlib.suppress(InputError):
                    return _wire_form(cls, data, value)
            raise
    if len(included) == 1:
        try:
            return _wire_form(cls, data, value)
        except InputError as error:
            if isinstance(value, dict):
                unknown = ", ".join(repr(key) for key in value if key not in names)
                raise InputError(
                    f"task {task_name} has no field {unknown}; expected fields: {expected} "
                    f"(nor is the object a value of {names[0]!r} alone: {error})"
                ) from None
            raise InputError(
                f"input {text!r} is not a value of field {names[0]!r} of task {task_name}: {error}; "
                f'pass the fields as an object: {{"{names[0]}": ...}}'
            ) from None
    if isinstance(value, dict):
        unknown = ", ".join(repr(key) for key in value if key not in names)
        raise InputError(f"task {task_name} has no field {unknown}; expected fields: {expected}")
    raise InputError(f"task {task_name} takes an object of its fields {expected}, but got {text!r}")


def _submitted(task: Any) -> bytes:
    """The input bytes a submission of `task` carries (`FutureTask.input`): its `_serialize()`."""
    data: bytes = task._serialize()  # noqa: SLF001 -- what the SDK's submissions call
    return data


def _wire_form(cls: type, data: bytes, value: Any) -> bytes:
    """The bytes of a one-field task given as its field's value alone (`data`, decoded `value`)."""
    field = _included_fields(cls)[0]
    from tilebox.workflows.task import Task  # noqa: PLC0415 -- task.py imports this module

    # The keys can only be checked against the annotation when the task decodes by it.
    decodes_by_annotation = getattr(cls._deserialize, "__func__", None) is getattr(  # type: ignore[attr-defined]
        Task._deserialize,  # noqa: SLF001 -- the SDK's hook, compared, not called
        "__func__",
        None,
    )
    if decodes_by_annotation:
        _check_keys(cls, _type_hints(cls).get(field.name, field.type), value, field.name)
    try:
        task = cls._deserialize(data)  # type: ignore[attr-defined]
    except Exception as error:  # noqa: BLE001 -- any decoding failure is the input's fault
        raise InputError(str(error)) from None
    _fill_defaults(getattr(task, field.name, None))
    return _submitted(task)


def _build(cls: type, value: dict[str, Any], included: list[Any]) -> Any:
    """The task built from an object of its fields (all names known), as its constructor builds it."""
    from dataclasses import MISSING  # noqa: PLC0415 -- only the CLI's input path needs it

    task_name = cls.__qualname__
    names = [field.name for field in included]
    missing = [
        field.name
        for field in included
        if field.name not in value and field.default is MISSING and field.default_factory is MISSING
    ]
    if missing:
        raise InputError(
            f"task {task_name} needs field {', '.join(repr(name) for name in missing)}; "
            f"expected fields: {', '.join(names)}"
        )
    hints = _type_hints(cls)
    arguments = {}
    for name, item in value.items():
        annotation = hints.get(name, Any)
        message_type = _unwrap_optional(annotation)
        _check_keys(cls, annotation, item, name)
        try:
            if _is_message_type(message_type) and isinstance(item, dict):
                from google.protobuf import json_format  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: PLC0415

                arguments[name] = json_format.ParseDict(item, message_type())
            else:
                arguments[name] = _fill_defaults(decode_json(_json.encode(item), annotation))
        except Exception as error:  # noqa: BLE001 -- any decoding failure is the input's fault
            raise InputError(f"field {name!r} of task {task_name}: {error}") from None
    try:
        return cls(**arguments)
    except Exception as error:  # noqa: BLE001 -- __post_init__ may refuse the values
        raise InputError(f"task {task_name} refuses these fields: {error!r}") from None


def _check_keys(cls: type, annotation: Any, value: Any, path: str) -> None:  # noqa: C901, PLR0912
    """Raise `InputError` for a key of `value` at `path` that names no field of the dataclass the
    annotation expects there (the decoder would drop it silently)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        _check_keys(cls, args[0], value, path)
    elif origin in (typing.Union, UnionType):
        # Members that take this kind of JSON value; the value fits if it fits one of them.
        members = [member for member in args if _takes(member, value)]
        errors = []
        for member in members:
            try:
                _check_keys(cls, member, value, path)
            except InputError as error:
                errors.append(error)
            else:
                return
        if errors:
            raise errors[0]
    elif origin in (list, set, frozenset, tuple) and isinstance(value, list):
        for index, item in enumerate(value):
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                item_type = args[index] if index < len(args) else Any
            else:
                item_type = args[0] if args else Any
            _check_keys(cls, item_type, item, f"{path}[{index}]")
    elif origin is dict and len(args) == 2 and isinstance(value, dict):
        for key, item in value.items():
            _check_keys(cls, args[1], item, f"{path}.{key}")
    elif isinstance(annotation, type) and is_dataclass(annotation) and isinstance(value, dict):
        known = [field.name for field in fields(annotation)]
        hints = _type_hints(annotation)
        for key, item in value.items():
            if key not in known:
                raise InputError(
                    f"task {cls.__qualname__} has no field {f'{path}.{key}'!r}; "
                    f"expected fields of {path} ({annotation.__qualname__}): {', '.join(known) or 'none'}"
                )
            _check_keys(cls, hints.get(key, Any), item, f"{path}.{key}")


def _takes(annotation: Any, value: Any) -> bool:
    """Whether `annotation` can take `value`'s kind of JSON value (object, array or other)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _takes(typing.get_args(annotation)[0], value)
    if isinstance(value, dict):
        return origin is dict or (isinstance(annotation, type) and (is_dataclass(annotation) or annotation is dict))
    if isinstance(value, list):
        return origin in (list, set, frozenset, tuple) or annotation in (list, set, frozenset, tuple)
    return True


def _fill_defaults(value: Any) -> Any:
    """`value` with every dataclass inside holding its plain defaults as its constructor would:
    the decoder leaves them out of the instance (like msgspec), and the encoder then omits them."""
    from dataclasses import MISSING  # noqa: PLC0415

    if is_dataclass(value) and not isinstance(value, type):
        attributes = getattr(value, "__dict__", None)
        for field in fields(value):
            if attributes is not None and field.name not in attributes and field.default is not MISSING:
                object.__setattr__(value, field.name, field.default)
            _fill_defaults(getattr(value, field.name, None))
    elif isinstance(value, dict):
        for item in value.values():
            _fill_defaults(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _fill_defaults(item)
    return value
