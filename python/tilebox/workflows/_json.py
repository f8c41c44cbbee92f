"""A pure-Python reproduction of msgspec 0.22's JSON dialect.

The official SDK writes task inputs with `msgspec.json.Encoder` and reads them with a typed
`msgspec.json.Decoder(strict=True)`. msgspec is a C extension that refuses to load in an isolated
sub-interpreter, so this module reproduces the parts the SDK relies on, byte for byte on the
encoding side and message for message on the decoding side:

* `encode(value, enc_hook)` writes compact JSON: raw UTF-8, the minimal escape set, msgspec's
  float layout, RFC 3339 datetimes, ISO 8601 durations, base64 bytes, enum values, dataclasses in
  field order and sets/tuples as arrays.
* `Decoder(annotation, dec_hook).decode(data)` parses JSON straight into the annotated type with
  msgspec's strict conversion rules (an `int` field rejects `"1"`, `1.0` and `true`; a `float`
  field accepts `1`), and raises `DecodeError` / `ValidationError` with msgspec's messages,
  including the byte offsets of malformed input and the `- at `$.path`` suffix.

The decoder mirrors msgspec's structure: an annotation is compiled once into a `_TypeNode` (a set
of accepted JSON shapes plus the details needed to build each one), and parsing dispatches on the
first character of each value, so errors surface in the same order msgspec raises them.
"""

from __future__ import annotations

import base64
import collections.abc
import dataclasses
import datetime
import decimal
import enum
import re
import threading
import typing
import uuid
from collections.abc import Callable
from types import NoneType, UnionType
from typing import Any

__all__ = ["DecodeError", "Decoder", "MsgspecError", "ValidationError", "encode"]


class MsgspecError(Exception):
    """Base class of the errors below (named after msgspec's hierarchy)."""


class DecodeError(MsgspecError, ValueError):
    """The input is not valid JSON (or ends too early)."""


class ValidationError(DecodeError):
    """The input is valid JSON but does not match the expected type."""


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------

EncHook = Callable[[Any], Any]

_ESCAPE = re.compile(r'[\x00-\x1f"\\]')
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _encode_str(value: str) -> str:
    if not value.isascii():
        value.encode("utf-8")  # lone surrogates fail here, with their position in this string
    return '"' + _ESCAPE.sub(_escape_char, value) + '"'


def format_float(value: float) -> str:
    """Format a float the way msgspec (ryu, shortest round-trip digits) does.

    Fixed notation while the decimal exponent is within [-5, 15], with `.0` for integral values;
    otherwise `d.ddde-7` style with no `+` and no zero padding. Non-finite values are `null`.
    """
    if value != value or value in (float("inf"), float("-inf")):
        return "null"
    text = repr(value)
    sign = ""
    if text.startswith("-"):
        sign, text = "-", text[1:]
    if value == 0:
        return sign + "0.0"
    if "e" in text:
        mantissa, exponent_text = text.split("e")
        exponent = int(exponent_text)
        digits = mantissa.replace(".", "")
    else:
        integer, fraction = text.split(".")
        if integer != "0":
            exponent = len(integer) - 1
            digits = integer + fraction
        else:
            stripped = fraction.lstrip("0")
            exponent = -(len(fraction) - len(stripped)) - 1
            digits = stripped
    digits = digits.rstrip("0") or "0"
    integer_digits = exponent + 1  # digits before the decimal point
    if 0 < integer_digits <= 16:
        if len(digits) <= integer_digits:
            return f"{sign}{digits.ljust(integer_digits, '0')}.0"
        return f"{sign}{digits[:integer_digits]}.{digits[integer_digits:]}"
    if -5 < integer_digits <= 0:
        return f"{sign}0.{'0' * -integer_digits}{digits}"
    mantissa = digits[0] if len(digits) == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{sign}{mantissa}e{exponent}"


def _format_float_key(value: float) -> str:
    if value != value:
        return "nan"
    if value == float("inf"):
        return "inf"
    if value == float("-inf"):
        return "-inf"
    return format_float(value)


def _format_time(
    hour: int, minute: int, second: int, microsecond: int, tzinfo: datetime.tzinfo | None, at: Any
) -> str:
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    if microsecond:
        text += f".{microsecond:06d}"
    if tzinfo is None:
        return text
    if tzinfo is datetime.UTC:
        return text + "Z"
    offset = tzinfo.utcoffset(at)
    if offset is None:
        return text
    if not isinstance(offset, datetime.timedelta):
        raise TypeError("tzinfo.utcoffset returned a non-timedelta object")
    # Like msgspec: whole seconds only, rounded to the nearest minute (exactly 30 s rounds down).
    days, seconds = offset.days, offset.seconds
    if seconds == 0:
        return text + "Z"
    sign = "+"
    if days == -1:
        sign, seconds = "-", 86400 - seconds
    offset_hour, offset_minute = seconds // 3600, (seconds // 60) % 60
    if seconds - (offset_hour * 3600 + offset_minute * 60) > 30:
        offset_minute += 1
        if offset_minute == 60:
            offset_minute, offset_hour = 0, offset_hour + 1
            if offset_hour == 24:
                offset_hour = 0
    if offset_hour == 0 and offset_minute == 0:
        return text + "Z"
    return f"{text}{sign}{offset_hour:02d}:{offset_minute:02d}"


def format_datetime(value: datetime.datetime) -> str:
    """RFC 3339 as msgspec writes it: `Z` for UTC, offsets as `+HH:MM`, 6 fraction digits."""
    date = f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    time = _format_time(value.hour, value.minute, value.second, value.microsecond, value.tzinfo, value)
    return f"{date}T{time}"


def format_date(value: datetime.date) -> str:
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def format_time(value: datetime.time) -> str:
    return _format_time(value.hour, value.minute, value.second, value.microsecond, value.tzinfo, None)


def format_timedelta(value: datetime.timedelta) -> str:
    """ISO 8601 duration as msgspec writes it: `P1DT3S`, `PT90.000005S`, `P0D`, `-PT1S`."""
    days, seconds, micros = value.days, value.seconds, value.microseconds
    sign = ""
    if days < 0:
        sign = "-"
        days = -days
        if seconds or micros:
            days -= 1
            if micros:
                micros = 1_000_000 - micros
                seconds += 1
            seconds = 86400 - seconds
    text = sign + "P"
    if days:
        text += f"{days}D"
    if seconds or micros:
        text += f"T{seconds}"
        if micros:
            text += "." + f"{micros:06d}".rstrip("0")
        text += "S"
    elif not days:
        text += "0D"
    return text


def _b64(value: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(value).decode("ascii")


def _is_enum_instance(value: Any) -> bool:
    return isinstance(type(value), enum.EnumMeta)


def _dataclass_items(value: Any) -> list[tuple[str, Any]]:
    """The (name, value) pairs msgspec writes for a dataclass instance.

    msgspec walks `__dataclass_fields__` and reads each value from the instance `__dict__` (or a
    data descriptor such as a slot). Fields only present as class attributes (e.g. `init=False`
    fields with a plain default, or ClassVars) and unset attributes are left out.
    """
    fields = type(value).__dataclass_fields__
    cls = type(value)
    standard_getattr = cls.__getattribute__ is object.__getattribute__
    instance_dict = getattr(value, "__dict__", None) if standard_getattr else None
    items = []
    for name in fields:
        if type(name) is not str:
            continue
        if not standard_getattr:
            try:
                items.append((name, getattr(value, name)))
            except AttributeError:
                pass
            continue
        if instance_dict is not None and name in instance_dict:
            items.append((name, instance_dict[name]))
            continue
        for klass in cls.__mro__:
            if name in klass.__dict__:
                descriptor = klass.__dict__[name]
                descriptor_type = type(descriptor)
                if hasattr(descriptor_type, "__get__") and hasattr(descriptor_type, "__set__"):
                    try:
                        items.append((name, descriptor_type.__get__(descriptor, value, cls)))
                    except AttributeError:
                        pass
                break
    return items


class _Encoder:
    def __init__(self, enc_hook: EncHook | None) -> None:
        self.enc_hook = enc_hook
        self.parts: list[str] = []

    def value(self, value: Any) -> None:  # noqa: C901, PLR0912 -- one dispatch, in msgspec's order
        parts = self.parts
        kind = type(value)
        if kind is str:
            parts.append(_encode_str(value))
        elif kind is int:
            parts.append(str(value))
        elif kind is float:
            parts.append(format_float(value))
        elif isinstance(value, list):
            self.array(value)
        elif isinstance(value, dict):
            self.mapping(value)
        elif value is None:
            parts.append("null")
        elif value is True:
            parts.append("true")
        elif value is False:
            parts.append("false")
        elif isinstance(value, tuple):
            self.array(value)
        elif kind is datetime.datetime:
            parts.append(f'"{format_datetime(value)}"')
        elif kind is datetime.date:
            parts.append(f'"{format_date(value)}"')
        elif kind is datetime.time:
            parts.append(f'"{format_time(value)}"')
        elif kind is datetime.timedelta:
            parts.append(f'"{format_timedelta(value)}"')
        elif kind in (bytes, bytearray, memoryview):
            parts.append(f'"{_b64(value)}"')
        elif _is_enum_instance(value):
            self.enum_value(value)
        elif isinstance(value, uuid.UUID):
            parts.append(f'"{value}"')
        elif kind is decimal.Decimal:
            parts.append(f'"{value}"')
        elif isinstance(value, (set, frozenset)):
            self.array(value)
        elif not isinstance(value, type) and hasattr(value, "__dataclass_fields__"):
            self.dataclass(value)
        elif self.enc_hook is not None:
            self.value(self.enc_hook(value))
        else:
            raise TypeError(f"Encoding objects of type {_type_name(kind)} is unsupported")

    def enum_value(self, value: enum.Enum) -> None:
        if isinstance(value, int):
            self.parts.append(str(int(value)))
        elif isinstance(value, str):
            self.parts.append(_encode_str(str.__str__(value)))
        else:
            self.value(value.value)

    def array(self, values: Any) -> None:
        self.parts.append("[")
        first = True
        for item in values:
            if not first:
                self.parts.append(",")
            first = False
            self.value(item)
        self.parts.append("]")

    def mapping(self, values: dict[Any, Any]) -> None:
        self.parts.append("{")
        first = True
        for key, item in values.items():
            if not first:
                self.parts.append(",")
            first = False
            self.parts.append(_encode_str(self.key(key)))
            self.parts.append(":")
            self.value(item)
        self.parts.append("}")

    def key(self, key: Any) -> str:  # noqa: C901, PLR0911 -- msgspec's key rules, in order
        kind = type(key)
        if kind is str:
            return key
        if kind is int:
            return str(key)
        if kind is float:
            return _format_float_key(key)
        if _is_enum_instance(key):
            if isinstance(key, int):
                return str(int(key))
            if isinstance(key, str):
                return str.__str__(key)
            return self.key(key.value)
        if kind is datetime.datetime:
            return format_datetime(key)
        if kind is datetime.date:
            return format_date(key)
        if kind is datetime.time:
            return format_time(key)
        if kind is datetime.timedelta:
            return format_timedelta(key)
        if kind is bytes:
            return _b64(key)
        if kind is decimal.Decimal:
            return str(key)
        if isinstance(key, uuid.UUID):
            return str(key)
        if self.enc_hook is not None:
            return self.key(self.enc_hook(key))
        raise TypeError("Only dicts with str-like or number-like keys are supported")

    def dataclass(self, value: Any) -> None:
        self.parts.append("{")
        first = True
        for name, item in _dataclass_items(value):
            if not first:
                self.parts.append(",")
            first = False
            self.parts.append(f'"{name}":')
            self.value(item)
        self.parts.append("}")


def encode(value: Any, enc_hook: EncHook | None = None) -> bytes:
    """Encode `value` as compact JSON, byte-identical to `msgspec.json.Encoder(enc_hook).encode`."""
    encoder = _Encoder(enc_hook)
    encoder.value(value)
    return "".join(encoder.parts).encode("utf-8")


def _type_name(cls: type) -> str:
    """CPython's `tp_name`: the bare name for classes defined in Python, dotted for C types."""
    if cls.__module__ == "builtins" or "__module__" in cls.__dict__:
        return cls.__name__
    return f"{cls.__module__}.{cls.__name__}"


# --------------------------------------------------------------------------------------------------
# Type nodes: an annotation compiled into the set of JSON shapes it accepts
# --------------------------------------------------------------------------------------------------

ANY = 1 << 0
NONE = 1 << 1
BOOL = 1 << 2
INT = 1 << 3
FLOAT = 1 << 4
STR = 1 << 5
BYTES = 1 << 6
BYTEARRAY = 1 << 7
MEMORYVIEW = 1 << 8
DATETIME = 1 << 9
DATE = 1 << 10
TIME = 1 << 11
TIMEDELTA = 1 << 12
UUID = 1 << 13
DECIMAL = 1 << 14
ENUM = 1 << 20
INTENUM = 1 << 21
CUSTOM = 1 << 22
CUSTOM_GENERIC = 1 << 23
DICT = 1 << 24
LIST = 1 << 26
SET = 1 << 27
FROZENSET = 1 << 28
VARTUPLE = 1 << 29
FIXTUPLE = 1 << 30
INTLITERAL = 1 << 31
STRLITERAL = 1 << 32
TYPEDDICT = 1 << 33
DATACLASS = 1 << 34
NAMEDTUPLE = 1 << 35
TRUE_LITERAL = 1 << 36
FALSE_LITERAL = 1 << 37

_BINARY = BYTES | BYTEARRAY | MEMORYVIEW
_CUSTOMS = CUSTOM | CUSTOM_GENERIC
_ARRAY_LIKE = LIST | SET | FROZENSET | VARTUPLE | FIXTUPLE | NAMEDTUPLE
_OBJECT_LIKE = TYPEDDICT | DATACLASS | DICT
_STR_LIKE = STR | STRLITERAL | ENUM | _BINARY | DATETIME | DATE | TIME | TIMEDELTA | UUID | DECIMAL

_REPR_ORDER = (
    (BOOL | TRUE_LITERAL | FALSE_LITERAL, "bool"),
    (INT | INTENUM | INTLITERAL, "int"),
    (FLOAT, "float"),
    (STR | ENUM | STRLITERAL, "str"),
    (_BINARY, "bytes"),
    (DATETIME, "datetime"),
    (DATE, "date"),
    (TIME, "time"),
    (TIMEDELTA, "duration"),
    (UUID, "uuid"),
    (DECIMAL, "decimal"),
    (_OBJECT_LIKE, "object"),
    (_ARRAY_LIKE, "array"),
    (NONE, "null"),
)


class _DataclassInfo:
    """How to build one dataclass: its fields (required first, like msgspec), defaults, hooks."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.fields: dict[str, _TypeNode] = {}
        self.order: list[tuple[str, bool, Any, bool]] = []  # (name, required, default, is_factory)
        self.post_init: Callable[[Any], Any] | None = getattr(cls, "__post_init__", None)


class _NamedTupleInfo:
    def __init__(self, cls: type, nodes: list[_TypeNode]) -> None:
        self.cls = cls
        self.nodes = nodes
        self.defaults = tuple(cls._field_defaults[name] for name in cls._fields if name in cls._field_defaults)


class _TypedDictInfo:
    def __init__(self, fields: dict[str, _TypeNode], required: frozenset[str]) -> None:
        self.fields = fields
        self.required = required


class _TypeNode:
    __slots__ = (
        "array",
        "custom",
        "dataclass",
        "dict_key",
        "dict_value",
        "enum_lookup",
        "fixtuple",
        "flags",
        "int_lookup",
        "namedtuple",
        "str_lookup",
        "typeddict",
    )

    def __init__(self) -> None:
        self.flags = 0
        self.custom: Any = None
        self.str_lookup: dict[str, Any] | None = None
        self.int_lookup: dict[int, Any] | None = None
        self.enum_lookup: dict[str, type[enum.Enum]] = {}  # "str"/"int" -> enum class, for _missing_
        self.dict_key: _TypeNode | None = None
        self.dict_value: _TypeNode | None = None
        self.array: _TypeNode | None = None
        self.fixtuple: list[_TypeNode] = []
        self.dataclass: _DataclassInfo | None = None
        self.namedtuple: _NamedTupleInfo | None = None
        self.typeddict: _TypedDictInfo | None = None

    def describe(self) -> str:
        """msgspec's `typenode_simple_repr`, e.g. `int | null`."""
        if self.flags & (ANY | _CUSTOMS) or self.flags == 0:
            return "any"
        return " | ".join(name for mask, name in _REPR_ORDER if self.flags & mask)


_ANY_NODE = _TypeNode()
_ANY_NODE.flags = ANY

_build_lock = threading.RLock()
_dataclass_infos: dict[type, _DataclassInfo] = {}


def _unwrap(annotation: Any) -> Any:
    """Strip wrappers msgspec looks through: Annotated, NewType, `type X = ...`, Final."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif isinstance(annotation, typing.NewType):
            annotation = annotation.__supertype__
        elif isinstance(annotation, typing.TypeAliasType):
            annotation = annotation.__value__
        elif origin is typing.Final:
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation


_SCALARS: dict[Any, int] = {
    NoneType: NONE,
    None: NONE,
    bool: BOOL,
    int: INT,
    float: FLOAT,
    str: STR,
    bytes: BYTES,
    bytearray: BYTEARRAY,
    memoryview: MEMORYVIEW,
    datetime.datetime: DATETIME,
    datetime.date: DATE,
    datetime.time: TIME,
    datetime.timedelta: TIMEDELTA,
    uuid.UUID: UUID,
    decimal.Decimal: DECIMAL,
}


class _NodeBuilder:
    """Collects every member of a (possibly union) annotation into one `_TypeNode`."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.node = _TypeNode()
        self.literals: list[Any] = []
        self.has_array = False
        self.has_dict = False
        self.int_enum: type | None = None
        self.str_enum: type | None = None

    def unique_error(self, kind: str) -> TypeError:
        return TypeError(
            f"Type unions may not contain more than one {kind} type - type `{self.context!r}` is not supported"
        )

    def collect(self, annotation: Any) -> None:  # noqa: C901, PLR0912, PLR0915 -- mirrors msgspec's collector
        node = self.node
        if node.flags & ANY:
            return
        annotation = _unwrap(annotation)
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is None and _hashable(annotation) and annotation in _CONCRETE_TYPES:
            origin = _CONCRETE_TYPES[annotation]  # a bare `list`, `Sequence`, ...
        elif origin in _CONCRETE_TYPES:
            origin = _CONCRETE_TYPES[origin]
        if annotation is Any:
            self.node = _TypeNode()
            self.node.flags = ANY
            self.literals.clear()
            return
        if _hashable(annotation) and annotation in _SCALARS:
            node.flags |= _SCALARS[annotation]
        elif isinstance(annotation, typing.TypeVar):
            self.collect(annotation.__bound__ if annotation.__bound__ is not None else Any)
        elif isinstance(annotation, enum.EnumMeta):
            self.collect_enum(annotation)
        elif origin is dict:
            if self.has_dict:
                raise self.unique_error("dict")
            self.has_dict = True
            if args and len(args) != 2:
                raise TypeError(f"Type '{annotation!r}' is not supported")
            node.flags |= DICT
            node.dict_key = _build(args[0] if args else Any)
            node.dict_value = _build(args[1] if args else Any)
        elif origin in (list, set, frozenset):
            kind = {list: LIST, set: SET, frozenset: FROZENSET}[origin]
            if args and len(args) != 1:
                raise TypeError(f"Type '{annotation!r}' is not supported")
            self.collect_array(kind, args[0] if args else Any)
        elif origin is tuple:
            if annotation in (tuple, typing.Tuple):  # noqa: UP006 -- unparametrised: any length, any items
                self.collect_array(VARTUPLE, Any)
            elif len(args) == 2 and args[1] is Ellipsis:
                self.collect_array(VARTUPLE, args[0])
            else:
                self.collect_array(FIXTUPLE, args)
        elif origin in (typing.Union, UnionType):
            for arg in args:
                self.collect(arg)
        elif origin is typing.Literal:
            self.literals.append(annotation)
        elif _is_typeddict(annotation):
            node.flags |= TYPEDDICT
            node.typeddict = _typeddict_info(annotation)
        elif _is_namedtuple(annotation):
            if self.has_array:
                raise self.unique_error("array-like (list, set, tuple)")
            self.has_array = True
            node.flags |= NAMEDTUPLE
            hints = typing.get_type_hints(annotation, include_extras=True)
            node.namedtuple = _NamedTupleInfo(
                annotation, [_build(hints.get(name, Any)) for name in annotation._fields]
            )
        elif dataclasses.is_dataclass(annotation) or (origin is not None and dataclasses.is_dataclass(origin)):
            node.flags |= DATACLASS
            node.dataclass = _dataclass_info(origin if origin is not None else annotation)
        else:
            target = origin if origin is not None else annotation
            if not isinstance(target, type):
                raise TypeError(f"Type '{annotation!r}' is not supported")
            if node.custom is not None:
                raise self.unique_error("custom")
            node.flags |= CUSTOM_GENERIC if origin is not None else CUSTOM
            node.custom = annotation

    def collect_enum(self, cls: type[enum.Enum]) -> None:
        if issubclass(cls, int):
            is_int = True
        elif issubclass(cls, str):
            is_int = False
        else:
            values = list(cls._value2member_map_)
            if all(type(value) is int for value in values):
                is_int = True
            elif all(type(value) is str for value in values):
                is_int = False
            else:
                raise TypeError(
                    f"Enums must contain either all str or all int values - type `{self.context!r}` is not supported"
                )
        node = self.node
        if is_int:
            if self.int_enum is not None:
                raise self.unique_error("int enum")
            self.int_enum = cls
            node.flags |= INTENUM
            node.int_lookup = {int(member.value): member for member in cls}
            node.enum_lookup["int"] = cls
        else:
            if self.str_enum is not None:
                raise self.unique_error("str enum")
            self.str_enum = cls
            node.flags |= ENUM
            node.str_lookup = {str(member.value): member for member in cls}
            node.enum_lookup["str"] = cls

    def collect_array(self, kind: int, arg: Any) -> None:
        if self.has_array:
            raise self.unique_error("array-like (list, set, tuple)")
        self.has_array = True
        self.node.flags |= kind
        if kind == FIXTUPLE:
            members = arg
            if len(members) == 1 and members[0] == ():
                members = ()
            self.node.fixtuple = [_build(member) for member in members]
        else:
            self.node.array = _build(arg)

    def finish(self) -> _TypeNode:
        node = self.node
        if node.flags & ANY:
            return node
        for literal in self.literals:
            for value in _literal_values(literal):
                if value is None:
                    node.flags |= NONE
                elif value is True:
                    node.flags |= TRUE_LITERAL
                elif value is False:
                    node.flags |= FALSE_LITERAL
                elif type(value) is int:
                    node.flags |= INTLITERAL
                    node.int_lookup = {**(node.int_lookup or {}), value: value}
                elif type(value) is str:
                    node.flags |= STRLITERAL
                    node.str_lookup = {**(node.str_lookup or {}), value: value}
                else:
                    raise TypeError(
                        f"Literal may only contain None/integers/strings - `{self.context!r}` is not supported"
                    )
        self.check_invariants()
        if node.custom is not None:
            # Like msgspec: a custom type's JSON value is decoded as `Any`, then handed to dec_hook.
            node.flags |= ANY
        return node

    def check_invariants(self) -> None:
        flags = self.node.flags
        context = repr(self.context)
        if self.node.custom is not None and flags & ~(_CUSTOMS | NONE):
            raise TypeError(
                "Type unions containing a custom type may not contain any additional types other than `None` "
                f"- type `{context}` is not supported"
            )
        if bin(flags & _ARRAY_LIKE).count("1") > 1:
            raise TypeError(
                "Type unions may not contain more than one array-like type (`Struct(array_like=True)`, `list`, "
                f"`set`, `frozenset`, `tuple`, `NamedTuple`) - type `{context}` is not supported"
            )
        if bin(flags & (TYPEDDICT | DATACLASS)).count("1") + (1 if flags & DICT else 0) > 1:
            raise TypeError(
                "Type unions may not contain more than one dict-like type (`Struct`, `dict`, `TypedDict`, "
                f"`dataclass`) - type `{context}` is not supported"
            )
        if flags & INT and flags & INTLITERAL:
            self.node.flags &= ~INTLITERAL
            self.node.int_lookup = None
        if flags & STR and flags & STRLITERAL:
            self.node.flags &= ~STRLITERAL
            self.node.str_lookup = None
        flags = self.node.flags
        if bin(flags & (INT | INTLITERAL | INTENUM)).count("1") > 1:
            raise TypeError(
                "Type unions may not contain more than one int-like type (`int`, `Enum`, `Literal[int values]`) "
                f"- type `{context}` is not supported"
            )
        if bin(flags & _STR_LIKE).count("1") > 1:
            raise TypeError(
                "Type unions may not contain more than one str-like type (`str`, `Enum`, `Literal[str values]`, "
                "`datetime`, `date`, `time`, `timedelta`, `uuid`, `decimal`, `bytes`, `bytearray`) "
                f"- type `{context}` is not supported"
            )


# Abstract collection annotations decode into these concrete types (msgspec's table).
_CONCRETE_TYPES: dict[Any, type] = {
    list: list,
    tuple: tuple,
    set: set,
    frozenset: frozenset,
    dict: dict,
    collections.abc.Collection: list,
    collections.abc.MutableSequence: list,
    collections.abc.Sequence: list,
    collections.abc.MutableSet: set,
    collections.abc.Set: set,
    collections.abc.MutableMapping: dict,
    collections.abc.Mapping: dict,
}


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _literal_values(literal: Any) -> list[Any]:
    values = []
    for arg in typing.get_args(literal):
        arg = _unwrap(arg)
        if typing.get_origin(arg) is typing.Literal:
            values.extend(_literal_values(arg))
        elif isinstance(arg, enum.Enum):
            values.append(arg.value)
        else:
            values.append(arg)
    return values


def _is_typeddict(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, dict) and hasattr(annotation, "__required_keys__")


def _is_namedtuple(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, tuple) and hasattr(annotation, "_fields")


def _typeddict_info(cls: type) -> _TypedDictInfo:
    hints = typing.get_type_hints(cls, include_extras=True)
    return _TypedDictInfo({name: _build(hint) for name, hint in hints.items()}, frozenset(cls.__required_keys__))


def _dataclass_info(cls: type) -> _DataclassInfo:
    """Build (once per class, recursion-safe) how to decode a dataclass."""
    info = _dataclass_infos.get(cls)
    if info is not None:
        return info
    info = _DataclassInfo(cls)
    _dataclass_infos[cls] = info
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
        required, optional = [], []
        for field in cls.__dataclass_fields__.values():
            field_type = getattr(field, "_field_type", None)
            if field_type is dataclasses._FIELD_INITVAR:  # type: ignore[attr-defined]
                raise TypeError("dataclasses with `InitVar` fields are not supported")
            if field_type is not dataclasses._FIELD:  # type: ignore[attr-defined]
                continue
            info.fields[field.name] = _build(hints.get(field.name, field.type))
            if field.default is not dataclasses.MISSING:
                optional.append((field.name, False, field.default, False))
            elif field.default_factory is not dataclasses.MISSING:
                optional.append((field.name, False, field.default_factory, True))
            else:
                required.append((field.name, True, None, False))
        info.order = required + optional
    except BaseException:
        del _dataclass_infos[cls]
        raise
    return info


def _build(annotation: Any) -> _TypeNode:
    if annotation is Any:
        return _ANY_NODE
    builder = _NodeBuilder(annotation)
    builder.collect(annotation)
    return builder.finish()


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------

DecHook = Callable[[type, Any], Any]

# A path is a tuple of segments: a field name (str), a list index (int), _KEY or _VALUE.
_KEY = object()
_VALUE = object()
_WHITESPACE = b" \t\n\r"
_STRING_SPECIAL = re.compile(rb'["\\\x00-\x1f]')
_DIGITS = frozenset(b"0123456789")
_HEX_VALUES = {ord(char): int(char, 16) for char in "0123456789abcdefABCDEF"}
_UNESCAPE = {
    ord("n"): b"\n",
    ord('"'): b'"',
    ord("t"): b"\t",
    ord("r"): b"\r",
    ord("\\"): b"\\",
    ord("/"): b"/",
    ord("b"): b"\b",
    ord("f"): b"\f",
}


def _path_suffix(path: tuple[Any, ...]) -> str:
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


def _expected(node: _TypeNode, got: str, path: tuple[Any, ...]) -> ValidationError:
    return ValidationError(f"Expected `{node.describe()}`, got `{got}`{_path_suffix(path)}")


def _invalid(message: str, path: tuple[Any, ...]) -> ValidationError:
    return ValidationError(f"{message}{_path_suffix(path)}")


def _hook_error(error: Exception, path: tuple[Any, ...]) -> ValidationError | None:
    """The ValidationError a TypeError/ValueError from user code becomes (others propagate as is)."""
    if isinstance(error, (TypeError, ValueError)) and not isinstance(error, DecodeError):
        return ValidationError(f"{error}{_path_suffix(path)}")
    return None


def _lookup(table: dict[Any, Any] | None, enum_cls: type[enum.Enum] | None, value: Any, path: tuple[Any, ...]) -> Any:
    if table is not None and value in table:
        return table[value]
    if enum_cls is not None and "_missing_" in vars(enum_cls):
        try:
            found = enum_cls._missing_(value)
        except Exception:  # noqa: BLE001 -- msgspec clears any error from _missing_
            found = None
        if found is not None:
            return found
    raise _invalid(f"Invalid enum value {value!r}", path)


class Decoder:
    """Typed JSON decoding with msgspec's strict rules and error messages."""

    def __init__(self, annotation: Any = Any, dec_hook: DecHook | None = None) -> None:
        with _build_lock:
            self.node = _build(annotation)
        self.dec_hook = dec_hook

    def decode(self, data: bytes | bytearray | memoryview | str) -> Any:
        if isinstance(data, str):
            data = data.encode("utf-8")
        return _Parser(bytes(data), self.dec_hook).document(self.node)


class _Parser:  # noqa: PLR0904 -- one method per JSON production, like msgspec
    def __init__(self, data: bytes, dec_hook: DecHook | None) -> None:
        self.data = data
        self.end = len(data)
        self.pos = 0
        self.dec_hook = dec_hook

    # ---- low level ------------------------------------------------------------------------------

    def malformed(self, message: str) -> DecodeError:
        return DecodeError(f"JSON is malformed: {message} (byte {self.pos})")

    @staticmethod
    def truncated() -> DecodeError:
        return DecodeError("Input data was truncated")

    def peek(self) -> int:
        """The next non-whitespace byte (not consumed)."""
        data, pos, end = self.data, self.pos, self.end
        while pos < end and data[pos] in _WHITESPACE:
            pos += 1
        self.pos = pos
        if pos == end:
            raise self.truncated()
        return data[pos]

    def document(self, node: _TypeNode) -> Any:
        value = self.value(node, ())
        while self.pos < self.end:
            byte = self.data[self.pos]
            self.pos += 1
            if byte not in _WHITESPACE:
                raise self.malformed("trailing characters")
        return value

    # ---- dispatch -------------------------------------------------------------------------------

    def value(self, node: _TypeNode, path: tuple[Any, ...]) -> Any:
        char = self.peek()
        if char == 0x6E:  # n
            value = self.null(node, path)
        elif char == 0x74:  # t
            value = self.true(node, path)
        elif char == 0x66:  # f
            value = self.false(node, path)
        elif char == 0x5B:  # [
            value = self.array(node, path)
        elif char == 0x7B:  # {
            value = self.object(node, path)
        elif char == 0x22:  # "
            value = self.string(node, path)
        else:
            value = self.number(node, path)
        if node.flags & _CUSTOMS:
            return self.custom(value, node, path)
        return value

    def custom(self, value: Any, node: _TypeNode, path: tuple[Any, ...]) -> Any:
        if value is None and node.flags & NONE:
            return None
        if self.dec_hook is not None:
            try:
                value = self.dec_hook(node.custom, value)
            except Exception as error:
                wrapped = _hook_error(error, path)
                if wrapped is None:
                    raise
                raise wrapped from error
        cls = typing.get_origin(node.custom) if node.flags & CUSTOM_GENERIC else node.custom
        if not isinstance(value, cls):
            raise ValidationError(
                f"Expected `{_type_name(cls)}`, got `{_type_name(type(value))}`{_path_suffix(path)}"
            )
        return value

    def literal(self, word: bytes) -> None:
        """Consume `word` (whose first byte was already checked)."""
        self.pos += 1
        rest = word[1:]
        if self.end - self.pos < len(rest):
            raise self.truncated()
        matches = self.data[self.pos : self.pos + len(rest)] == rest
        self.pos += len(rest)
        if not matches:
            raise self.malformed("invalid character")

    def null(self, node: _TypeNode, path: tuple[Any, ...]) -> None:
        self.literal(b"null")
        if node.flags & (ANY | NONE):
            return None
        raise _expected(node, "null", path)

    def true(self, node: _TypeNode, path: tuple[Any, ...]) -> bool:
        self.literal(b"true")
        if node.flags & (ANY | BOOL | TRUE_LITERAL):
            return True
        if node.flags & FALSE_LITERAL:
            raise _invalid("Invalid enum value True", path)
        raise _expected(node, "bool", path)

    def false(self, node: _TypeNode, path: tuple[Any, ...]) -> bool:
        self.literal(b"false")
        if node.flags & (ANY | BOOL | FALSE_LITERAL):
            return False
        if node.flags & TRUE_LITERAL:
            raise _invalid("Invalid enum value False", path)
        raise _expected(node, "bool", path)

    # ---- strings --------------------------------------------------------------------------------

    def string_bytes(self) -> bytes:
        """Parse a string (at `"`) and return its unescaped UTF-8 bytes."""
        data = self.data
        self.pos += 1
        unescaped = bytearray()
        while True:
            match = _STRING_SPECIAL.search(data, self.pos)
            if match is None:
                self.pos = self.end
                raise self.truncated()
            special = match.start()
            chunk = data[self.pos : special]
            self.pos = special
            if data[special] == 0x22:  # the closing quote
                self.pos += 1
                return bytes(unescaped + chunk) if unescaped else chunk
            if data[special] != 0x5C:  # a raw control character
                raise self.malformed("invalid character")
            unescaped += chunk
            self.pos += 1
            if self.pos == self.end:
                raise self.truncated()
            escape = data[self.pos]
            self.pos += 1
            if escape in _UNESCAPE:
                unescaped += _UNESCAPE[escape]
            elif escape == 0x75:  # \uXXXX
                unescaped += chr(self.unicode_escape()).encode("utf-8")
            else:
                raise self.malformed("invalid escape character in string")

    def codepoint(self) -> int:
        """Four hex digits of a `\\u` escape."""
        if self.end - self.pos < 4:
            raise self.truncated()
        value = 0
        for _ in range(4):
            digit = _HEX_VALUES.get(self.data[self.pos], -1)
            self.pos += 1
            if digit < 0:
                raise self.malformed("invalid character in unicode escape")
            value = (value << 4) + digit
        return value

    def unicode_escape(self) -> int:
        point = self.codepoint()
        if 0xDC00 <= point <= 0xDFFF:
            raise self.malformed("invalid utf-16 surrogate pair")
        if 0xD800 <= point <= 0xDBFF:
            if self.end - self.pos < 6:
                raise self.truncated()
            if self.data[self.pos : self.pos + 2] != b"\\u":
                raise self.malformed("unexpected end of escaped utf-16 surrogate pair")
            self.pos += 2
            low = self.codepoint()
            if not 0xDC00 <= low <= 0xDFFF:
                raise self.malformed("invalid utf-16 surrogate pair")
            point = 0x10000 + (((point - 0xD800) << 10) | (low - 0xDC00))
        return point

    def string(self, node: _TypeNode, path: tuple[Any, ...]) -> Any:  # noqa: PLR0911
        raw = self.string_bytes()
        flags = node.flags
        if flags & (STR | ANY):
            return raw.decode("utf-8")
        text = raw.decode("utf-8", "surrogateescape")
        if flags & DATETIME:
            return _parse_datetime(text, path)
        if flags & DATE:
            return _parse_date(text, path)
        if flags & TIME:
            return _parse_time(text, path)
        if flags & TIMEDELTA:
            return _parse_timedelta(text, path)
        if flags & UUID:
            return _parse_uuid(text, path)
        if flags & DECIMAL:
            return _parse_decimal(raw.decode("utf-8"), path)
        if flags & _BINARY:
            return _parse_base64(raw, node, path)
        if flags & (ENUM | STRLITERAL):
            return _lookup(node.str_lookup, node.enum_lookup.get("str"), raw.decode("utf-8"), path)
        raise _expected(node, "str", path)

    def dict_key(self, node: _TypeNode, path: tuple[Any, ...]) -> Any:  # noqa: PLR0911
        raw = self.string_bytes()
        flags = node.flags
        if flags & (STR | ANY):
            key = raw.decode("utf-8")
            if flags & _CUSTOMS:
                return self.custom(key, node, path)
            return key
        text = raw.decode("utf-8", "surrogateescape")
        if flags & (INT | INTENUM | INTLITERAL | FLOAT | DECIMAL):
            parsed = _NumberText(text, from_str=True).parse()
            if parsed is not None:
                return self.number_value(parsed, node, path, from_str=True)
        if flags & (ENUM | STRLITERAL):
            return _lookup(node.str_lookup, node.enum_lookup.get("str"), raw.decode("utf-8"), path)
        if flags & UUID:
            return _parse_uuid(text, path)
        if flags & DATETIME:
            return _parse_datetime(text, path)
        if flags & DATE:
            return _parse_date(text, path)
        if flags & TIME:
            return _parse_time(text, path)
        if flags & TIMEDELTA:
            return _parse_timedelta(text, path)
        if flags & (BYTES | MEMORYVIEW):
            return _parse_base64(raw, node, path)
        raise _expected(node, "str", path)

    # ---- numbers --------------------------------------------------------------------------------

    def number(self, node: _TypeNode, path: tuple[Any, ...]) -> Any:
        scanner = _NumberText(self.data, start=self.pos)
        parsed = scanner.parse()
        self.pos = scanner.pos
        if parsed is None:
            raise self.malformed(scanner.error)
        return self.number_value(parsed, node, path, from_str=False)

    @staticmethod
    def number_value(parsed: tuple[str, bool], node: _TypeNode, path: tuple[Any, ...], from_str: bool) -> Any:  # noqa: C901, PLR0911
        text, is_float = parsed
        flags = node.flags
        if text in ("nan", "inf", "-inf"):  # only reachable for dict keys
            if not flags & (ANY | FLOAT) and flags & DECIMAL:
                return _parse_decimal(text, path)
            value = float(text)
            if flags & (ANY | FLOAT):
                return value
            raise _expected(node, "str" if from_str else "float", path)
        if not is_float:
            value = int(text)
            if flags & (ANY | INT):
                if len(text.lstrip("-")) > 4300:
                    raise _invalid("Integer value out of range", path)
                return value
            if -(1 << 63) <= value < (1 << 64):
                if flags & (INTENUM | INTLITERAL):
                    return _lookup(node.int_lookup, node.enum_lookup.get("int"), value, path)
                if flags & FLOAT:
                    return float(value)
                if flags & DECIMAL:
                    return decimal.Decimal(value)
                raise _expected(node, "str" if from_str else "int", path)
        if not flags & (ANY | FLOAT) and flags & DECIMAL:
            return decimal.Decimal(text)
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise _invalid("Number out of range", path)
        if flags & (ANY | FLOAT):
            return value
        raise _expected(node, "str" if from_str else "float", path)

    # ---- arrays ---------------------------------------------------------------------------------

    def items(self, path: tuple[Any, ...]):  # noqa: ANN201 -- a generator of item indices
        """Walk `[a, b, ...]`: yields each index, positioned at the item's first byte."""
        self.pos += 1
        first = True
        index = 0
        while True:
            char = self.peek()
            if char == 0x5D:  # ]
                self.pos += 1
                return
            if char == 0x2C and not first:  # ,
                self.pos += 1
                char = self.peek()
            elif first:
                first = False
            else:
                raise self.malformed("expected ',' or ']'")
            if char == 0x5D:
                raise self.malformed("trailing comma in array")
            yield index
            index += 1

    def array(self, node: _TypeNode, path: tuple[Any, ...]) -> Any:  # noqa: PLR0911
        flags = node.flags
        if flags & ANY:
            return [self.value(_ANY_NODE, (*path, index)) for index in self.items(path)]
        if flags & LIST:
            return [self.value(node.array, (*path, index)) for index in self.items(path)]
        if flags & (SET | FROZENSET):
            items = {self.value(node.array, (*path, index)) for index in self.items(path)}
            return items if flags & SET else frozenset(items)
        if flags & VARTUPLE:
            return tuple([self.value(node.array, (*path, index)) for index in self.items(path)])
        if flags & FIXTUPLE:
            return self.fixed_tuple(node, path)
        if flags & NAMEDTUPLE:
            return self.named_tuple(node, path)
        raise _expected(node, "array", path)

    def fixed_tuple(self, node: _TypeNode, path: tuple[Any, ...]) -> tuple[Any, ...]:
        size = len(node.fixtuple)
        values = []
        for index in self.items(path):
            if index >= size:
                raise _invalid(f"Expected `array` of length {size}", path)
            values.append(self.value(node.fixtuple[index], (*path, index)))
        if len(values) < size:
            raise _invalid(f"Expected `array` of length {size}", path)
        return tuple(values)

    def named_tuple(self, node: _TypeNode, path: tuple[Any, ...]) -> tuple[Any, ...]:
        info = node.namedtuple
        assert info is not None  # noqa: S101 -- set whenever NAMEDTUPLE is
        size = len(info.nodes)
        required = size - len(info.defaults)
        message = (
            f"Expected `array` of length {size}"
            if not info.defaults
            else f"Expected `array` of length {required} to {size}"
        )
        values = []
        for index in self.items(path):
            if index >= size:
                raise _invalid(message, path)
            values.append(self.value(info.nodes[index], (*path, index)))
        if len(values) < required:
            raise _invalid(message, path)
        values.extend(info.defaults[len(values) - required :])
        return info.cls(*values)

    # ---- objects --------------------------------------------------------------------------------

    def members(self):  # noqa: ANN201 -- a generator positioned at each value
        """Walk `{"k": v, ...}`: yields at each key's opening quote; the caller reads key and `:`."""
        self.pos += 1
        first = True
        while True:
            char = self.peek()
            if char == 0x7D:  # }
                self.pos += 1
                return
            if char == 0x2C and not first:
                self.pos += 1
                char = self.peek()
            elif first:
                first = False
            else:
                raise self.malformed("expected ',' or '}'")
            if char == 0x22:
                yield
            elif char == 0x7D:
                raise self.malformed("trailing comma in object")
            else:
                raise self.malformed("object keys must be strings")

    def colon(self) -> None:
        if self.peek() != 0x3A:
            raise self.malformed("expected ':'")
        self.pos += 1

    def object(self, node: _TypeNode, path: tuple[Any, ...]) -> Any:
        flags = node.flags
        if flags & ANY:
            return self.mapping(_ANY_NODE, _ANY_NODE, path)
        if flags & DICT:
            return self.mapping(node.dict_key, node.dict_value, path)
        if flags & TYPEDDICT:
            return self.typed_dict(node, path)
        if flags & DATACLASS:
            return self.dataclass(node, path)
        raise _expected(node, "object", path)

    def mapping(self, key_node: _TypeNode, value_node: _TypeNode, path: tuple[Any, ...]) -> dict[Any, Any]:
        out = {}
        key_path, value_path = (*path, _KEY), (*path, _VALUE)
        for _ in self.members():
            key = self.dict_key(key_node, key_path)
            self.colon()
            out[key] = self.value(value_node, value_path)
        return out

    def typed_dict(self, node: _TypeNode, path: tuple[Any, ...]) -> dict[str, Any]:
        info = node.typeddict
        assert info is not None  # noqa: S101 -- set whenever TYPEDDICT is
        out = {}
        for _ in self.members():
            key = self.string_bytes().decode("utf-8", "surrogateescape")
            self.colon()
            if key in info.fields:
                out[key] = self.value(info.fields[key], (*path, key))
            else:
                self.skip()
        for name in info.fields:
            if name in info.required and name not in out:
                raise _invalid(f"Object missing required field `{name}`", path)
        return out

    def dataclass(self, node: _TypeNode, path: tuple[Any, ...]) -> Any:
        info = node.dataclass
        assert info is not None  # noqa: S101 -- set whenever DATACLASS is
        try:
            out = object.__new__(info.cls)
        except TypeError:
            out = info.cls.__new__(info.cls)
        for _ in self.members():
            key = self.string_bytes().decode("utf-8", "surrogateescape")
            self.colon()
            field_node = info.fields.get(key)
            if field_node is None:
                self.skip()
                continue
            object.__setattr__(out, key, self.value(field_node, (*path, key)))
        for name, required, default, is_factory in info.order:
            if hasattr(out, name):
                continue
            if required:
                raise _invalid(f"Object missing required field `{name}`", path)
            object.__setattr__(out, name, default() if is_factory else default)
        if info.post_init is not None:
            try:
                info.post_init(out)
            except Exception as error:
                wrapped = _hook_error(error, path)
                if wrapped is None:
                    raise
                raise wrapped from error
        return out

    # ---- skipping unknown values ----------------------------------------------------------------

    def skip(self) -> None:
        """Validate and pass over one value (unknown fields), with msgspec's skip-path messages."""
        char = self.peek()
        if char in (0x6E, 0x74, 0x66):  # null, true, false
            rest = {0x6E: b"ull", 0x74: b"rue", 0x66: b"alse"}[char]
            self.pos += 1
            if self.end - self.pos < len(rest):
                raise self.truncated()
            if self.data[self.pos : self.pos + len(rest)] != rest:
                raise self.malformed("invalid character")
            self.pos += len(rest)
        elif char == 0x22:
            self.skip_string()
        elif char == 0x5B:
            for _ in self.items(()):
                self.skip()
        elif char == 0x7B:
            self.skip_object()
        else:
            self.skip_number()

    def skip_string(self) -> None:
        data = self.data
        self.pos += 1
        while True:
            match = _STRING_SPECIAL.search(data, self.pos)
            if match is None:
                self.pos = self.end
                raise self.truncated()
            self.pos = match.start()
            byte = data[self.pos]
            if byte == 0x22:
                self.pos += 1
                return
            if byte != 0x5C:
                raise self.malformed("invalid character")
            self.pos += 1
            if self.pos == self.end:
                raise self.truncated()
            escape = data[self.pos]
            if escape in b'"\\/bfnrt':
                self.pos += 1
            elif escape == 0x75:
                self.pos += 1
                point = self.codepoint()
                if 0xDC00 <= point <= 0xDFFF:
                    raise self.malformed("invalid utf-16 surrogate pair")
                if 0xD800 <= point <= 0xDBFF:
                    if self.end - self.pos < 6:
                        raise self.truncated()
                    if data[self.pos : self.pos + 2] != b"\\u":
                        raise self.malformed("unexpected end of hex escape")
                    self.pos += 2
                    if not 0xDC00 <= self.codepoint() <= 0xDFFF:
                        raise self.malformed("invalid utf-16 surrogate pair")
            else:
                raise self.malformed("invalid escaped character")

    def skip_object(self) -> None:
        self.pos += 1
        first = True
        while True:
            char = self.peek()
            if char == 0x7D:
                self.pos += 1
                return
            if char == 0x2C and not first:
                self.pos += 1
                char = self.peek()
            elif first:
                first = False
            else:
                raise self.malformed("expected ',' or '}'")
            if char == 0x7D:
                raise self.malformed("trailing comma in object")
            if char != 0x22:
                raise self.malformed("expected '\"'")
            self.skip_string()
            self.colon()
            self.skip()

    def skip_number(self) -> None:
        data, end = self.data, self.end
        if data[self.pos] == 0x2D:
            self.pos += 1
        if self.pos < end and data[self.pos] == 0x30:
            self.pos += 1
            if self.pos < end and data[self.pos] in _DIGITS:
                raise self.malformed("invalid number")
        else:
            start = self.pos
            while self.pos < end and data[self.pos] in _DIGITS:
                self.pos += 1
            if start == self.pos:
                raise self.malformed("invalid character")
        if self.pos < end and data[self.pos] == 0x2E:
            self.pos += 1
            start = self.pos
            while self.pos < end and data[self.pos] in _DIGITS:
                self.pos += 1
            if start == self.pos:
                raise self.malformed("invalid number")
        if self.pos < end and data[self.pos] in (0x65, 0x45):
            self.pos += 1
            if self.pos < end and data[self.pos] in (0x2B, 0x2D):
                self.pos += 1
            start = self.pos
            while self.pos < end and data[self.pos] in _DIGITS:
                self.pos += 1
            if start == self.pos:
                raise self.malformed("invalid number")


class _NumberText:
    """Scan one JSON number like msgspec's `parse_number_inline`.

    `parse()` returns `(text, is_float)` or None with `error` set ("invalid number" or
    "invalid character") and `pos` where msgspec reports it.
    """

    def __init__(self, source: bytes | str, start: int = 0, from_str: bool = False) -> None:
        self.data = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source
        self.start = start
        self.pos = start
        self.end = len(self.data)
        self.from_str = from_str
        self.error = ""

    def fail(self, message: str) -> None:
        self.error = message

    def digits(self) -> int:
        data, pos, end = self.data, self.pos, self.end
        while pos < end and data[pos] in _DIGITS:
            pos += 1
        count = pos - self.pos
        self.pos = pos
        return count

    def parse(self) -> tuple[str, bool] | None:  # noqa: C901, PLR0911, PLR0912
        data, end = self.data, self.end
        if self.pos == end:
            self.fail("invalid number")
            return None
        negative = False
        if data[self.pos] == 0x2D:  # -
            self.pos += 1
            negative = True
            if self.pos == end:
                self.fail("invalid number")
                return None
        if data[self.pos] == 0x30:  # 0
            self.pos += 1
            if self.pos != end and data[self.pos] in _DIGITS:
                self.fail("invalid number")
                return None
        elif self.digits() == 0:
            if self.from_str:
                word = data[self.pos :].lower()
                if word in (b"nan", b"inf", b"infinity"):
                    self.pos = end
                    value = "nan" if word == b"nan" else "inf"
                    return ("-" + value if negative and value == "inf" else value), True
                self.fail("invalid number")
                return None
            self.fail("invalid character")
            return None
        is_float = False
        if self.pos != end and data[self.pos] == 0x2E:  # .
            is_float = True
            self.pos += 1
            if self.digits() == 0:
                self.fail("invalid number")
                return None
        if self.pos != end and data[self.pos] in (0x65, 0x45):  # e E
            is_float = True
            self.pos += 1
            if self.pos == end:
                self.fail("invalid number")
                return None
            if data[self.pos] in (0x2B, 0x2D):
                self.pos += 1
            if self.digits() == 0:
                self.fail("invalid number")
                return None
        if self.from_str and self.pos != end:
            self.fail("invalid number")
            return None
        return data[self.start : self.pos].decode("ascii"), is_float


# ---- string-encoded scalars ----------------------------------------------------------------------


def _fixed_int(text: str, start: int, width: int) -> int | None:
    chunk = text[start : start + width]
    if len(chunk) != width or any(char not in "0123456789" for char in chunk):
        return None
    return int(chunk)


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


class _TimeParts:
    """The `HH:MM:SS[.fff][Z|±HH[:]MM]` tail shared by datetime and time."""

    def __init__(self, text: str, start: int) -> None:
        self.ok = False
        self.round_up = False
        self.microsecond = 0
        self.tz: datetime.tzinfo | None = None
        hour = _fixed_int(text, start, 2)
        minute = _fixed_int(text, start + 3, 2)
        second = _fixed_int(text, start + 6, 2)
        if (
            hour is None
            or minute is None
            or second is None
            or text[start + 2 : start + 3] != ":"
            or text[start + 5 : start + 6] != ":"
        ):
            return
        self.hour, self.minute, self.second = hour, minute, second
        pos = start + 8
        end = len(text)
        char = text[pos] if pos < end else ""
        pos += 1
        if char == ".":
            ndigits = 0
            while ndigits < 6:
                char = text[pos] if pos < end else ""
                pos += 1
                if char == "" or char not in "0123456789":
                    break
                ndigits += 1
                self.microsecond = self.microsecond * 10 + int(char)
            else:
                char = text[pos] if pos < end else ""
                pos += 1
                if char != "" and char in "0123456789":
                    self.round_up = int(char) >= 5
                    while True:
                        char = text[pos] if pos < end else ""
                        pos += 1
                        if char == "" or char not in "0123456789":
                            break
            if ndigits == 0:
                return
            self.microsecond *= 10 ** (6 - ndigits)
        if char != "":
            offset = 0
            if char in "Zz":
                if pos != end:
                    return
            else:
                if char not in "+-":
                    return
                sign = -1 if char == "-" else 1
                if end - pos < 3:
                    return
                offset_hour = _fixed_int(text, pos, 2)
                if offset_hour is None:
                    return
                pos += 2
                if text[pos] == ":":
                    pos += 1
                if end - pos != 2:
                    return
                offset_minute = _fixed_int(text, pos, 2)
                if offset_minute is None or offset_hour > 23 or offset_minute > 59:
                    return
                offset = sign * (offset_hour * 60 + offset_minute)
            self.tz = datetime.UTC if offset == 0 else datetime.timezone(datetime.timedelta(minutes=offset))
        self.ok = hour <= 23 and minute <= 59 and second <= 59


def _parse_datetime(text: str, path: tuple[Any, ...]) -> datetime.datetime:
    invalid = _invalid("Invalid RFC3339 encoded datetime", path)
    if len(text) < 19:
        raise invalid
    year, month, day = _fixed_int(text, 0, 4), _fixed_int(text, 5, 2), _fixed_int(text, 8, 2)
    if year is None or month is None or day is None or text[4] != "-" or text[7] != "-" or text[10] not in "Tt ":
        raise invalid
    time = _TimeParts(text, 11)
    if not time.ok or year == 0 or not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        raise invalid
    value = datetime.datetime(year, month, day, time.hour, time.minute, time.second, time.microsecond, time.tz)
    if time.round_up:
        try:
            value += datetime.timedelta(microseconds=1)
        except OverflowError:
            raise invalid from None
    return value


def _parse_date(text: str, path: tuple[Any, ...]) -> datetime.date:
    year, month, day = _fixed_int(text, 0, 4), _fixed_int(text, 5, 2), _fixed_int(text, 8, 2)
    if (
        len(text) != 10
        or year is None
        or month is None
        or day is None
        or text[4] != "-"
        or text[7] != "-"
        or year == 0
        or not 1 <= month <= 12
        or not 1 <= day <= _days_in_month(year, month)
    ):
        raise _invalid("Invalid RFC3339 encoded date", path)
    return datetime.date(year, month, day)


def _parse_time(text: str, path: tuple[Any, ...]) -> datetime.time:
    time = _TimeParts(text, 0) if len(text) >= 8 else None
    if time is None or not time.ok:
        raise _invalid("Invalid RFC3339 encoded time", path)
    hour, minute, second, micro = time.hour, time.minute, time.second, time.microsecond
    if time.round_up:
        micro += 1
        if micro == 1_000_000:
            micro, second = 0, second + 1
            if second == 60:
                second, minute = 0, minute + 1
                if minute == 60:
                    minute, hour = 0, hour + 1
                    if hour == 24:
                        hour = 0
    return datetime.time(hour, minute, second, micro, time.tz)


_MAX_DURATION_SECONDS = 86399999999999
_MIN_DURATION_SECONDS = -86399999913600


def _parse_timedelta(text: str, path: tuple[Any, ...]) -> datetime.timedelta:  # noqa: C901, PLR0912, PLR0915
    invalid = _invalid("Invalid ISO8601 duration", path)
    out_of_range = _invalid("Duration is out of range", path)
    unsupported = _invalid("Only units 'D', 'H', 'M', and 'S' are supported when parsing ISO8601 durations", path)
    pos, end = 0, len(text)
    if pos == end:
        raise invalid
    negative = False
    if text[pos] in "-+":
        negative = text[pos] == "-"
        pos += 1
        if pos == end:
            raise invalid
    if text[pos] not in "Pp":
        raise invalid
    pos += 1
    if pos == end:
        raise invalid
    seconds, micros = 0, 0
    state = 0  # 0 start, 1 days, 2 T, 3 hours, 4 minutes, 5 seconds
    while True:
        if pos == end:
            raise invalid
        if text[pos] in "Tt":
            if state >= 2:
                raise invalid
            state = 2
            pos += 1
            continue
        if text[pos] not in "0123456789":
            raise invalid
        whole = int(text[pos])
        pos += 1
        while True:
            if pos == end:
                raise invalid
            if text[pos] not in "0123456789":
                break
            whole = whole * 10 + int(text[pos])
            if whole > (1 << 47):
                raise out_of_range
            pos += 1
        has_fraction = False
        numerator, denominator = 0, 10
        if text[pos] == ".":
            has_fraction = True
            pos += 1
            if pos == end or text[pos] not in "0123456789":
                raise invalid
            numerator = int(text[pos])
            pos += 1
            read = 0
            while True:
                if pos == end:
                    raise invalid
                if text[pos] not in "0123456789":
                    break
                if read < 10:
                    numerator = numerator * 10 + int(text[pos])
                    denominator *= 10
                    read += 1
                pos += 1
        unit = text[pos]
        pos += 1
        if unit in "Dd":
            if state >= 1:
                raise invalid
            state, scale = 1, 86400
        elif unit in "Hh":
            if state < 2 or state >= 3:
                raise invalid
            state, scale = 3, 3600
        elif unit in "Mm":
            if state < 2:
                raise unsupported
            if state >= 4:
                raise invalid
            state, scale = 4, 60
        elif unit in "Ss":
            if state < 2 or state >= 5:
                raise invalid
            state, scale = 5, 1
        elif unit in "WwYy":
            raise unsupported
        else:
            raise invalid
        seconds += scale * whole
        if has_fraction:
            numerator *= scale
            extra_seconds = numerator // denominator
            remainder = 1_000_000 * (numerator - extra_seconds * denominator)
            micros += (remainder + denominator // 2) // denominator
            if micros >= 1_000_000:
                extra_seconds += 1
                micros -= 1_000_000
            seconds += extra_seconds
        if seconds > _MAX_DURATION_SECONDS:
            raise out_of_range
        if pos == end:
            break
        if has_fraction:
            raise invalid
    if negative:
        seconds = -seconds
        if micros:
            micros = 1_000_000 - micros
            seconds -= 1
        if seconds < _MIN_DURATION_SECONDS:
            raise out_of_range
    return datetime.timedelta(seconds=seconds, microseconds=micros)


_HEX = frozenset("0123456789abcdefABCDEF")


def _parse_uuid(text: str, path: tuple[Any, ...]) -> uuid.UUID:
    if len(text) == 36:
        parts = text.split("-")
        valid = [len(part) for part in parts] == [8, 4, 4, 4, 12] and all(
            text[index] == "-" for index in (8, 13, 18, 23)
        )
        hex_text = "".join(parts)
    elif len(text) == 32:
        valid, hex_text = True, text
    else:
        valid, hex_text = False, ""
    if not valid or not all(char in _HEX for char in hex_text):
        raise _invalid("Invalid UUID", path)
    return uuid.UUID(hex=hex_text)


def _parse_decimal(text: str, path: tuple[Any, ...]) -> decimal.Decimal:
    try:
        return decimal.Decimal(text)
    except (decimal.InvalidOperation, ValueError):
        raise _invalid("Invalid decimal string", path) from None


_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _parse_base64(raw: bytes, node: _TypeNode, path: tuple[Any, ...]) -> bytes | bytearray | memoryview:
    invalid = _invalid("Invalid base64 encoded string", path)
    if len(raw) % 4:
        raise invalid
    padding = 0
    if raw.endswith(b"="):
        padding += 1
        if raw.endswith(b"=="):
            padding += 1
    body = raw[: len(raw) - padding]
    if not all(byte in _B64_ALPHABET for byte in body):
        raise invalid
    # Unused trailing bits are ignored (like msgspec), so decode leniently after validating.
    value = base64.b64decode(body + b"=" * (-len(body) % 4)) if body else b""
    if node.flags & BYTES:
        return value
    if node.flags & BYTEARRAY:
        return bytearray(value)
    return memoryview(value)
