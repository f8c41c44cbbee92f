"""Type nodes: an annotation compiled into the set of JSON shapes it accepts.

`_build(annotation)` walks an annotation once (unions, Optional, Literal, containers, enums,
dataclasses, TypedDicts, NamedTuples, custom classes) into a `_TypeNode`: bit flags for the JSON
shapes it accepts, plus what the decoder needs to build each shape. The checks follow msgspec's
type collector, so unsupported annotations and ambiguous unions raise msgspec's `TypeError`s.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import decimal
import enum
import threading
import typing
import uuid
from collections.abc import Callable
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Any, Protocol, TypeIs

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# What a `_TypeNode` accepts, one bit per type (a union sets several).
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


class _NamedTupleClass(Protocol):
    _fields: tuple[str, ...]
    _field_defaults: dict[str, Any]

    def __call__(self, *values: Any) -> tuple[Any, ...]: ...


class _TypedDictClass(Protocol):
    __required_keys__: frozenset[str]


class _DataclassInfo:
    """How to build one dataclass: its fields (required first, like msgspec), defaults, hooks."""

    def __init__(self, cls: type[DataclassInstance]) -> None:
        self.cls = cls
        self.fields: dict[str, _TypeNode] = {}
        self.order: list[tuple[str, bool, Any, bool]] = []  # (name, required, default, is_factory)
        self.post_init: Callable[[Any], Any] | None = getattr(cls, "__post_init__", None)


class _NamedTupleInfo:
    def __init__(self, cls: _NamedTupleClass, nodes: list[_TypeNode]) -> None:
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
        elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
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
            node.namedtuple = _NamedTupleInfo(annotation, [_build(hints.get(name, Any)) for name in annotation._fields])
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
        if (flags & _ARRAY_LIKE).bit_count() > 1:
            raise TypeError(
                "Type unions may not contain more than one array-like type (`Struct(array_like=True)`, `list`, "
                f"`set`, `frozenset`, `tuple`, `NamedTuple`) - type `{context}` is not supported"
            )
        if (flags & (TYPEDDICT | DATACLASS)).bit_count() + (1 if flags & DICT else 0) > 1:
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
        if (flags & (INT | INTLITERAL | INTENUM)).bit_count() > 1:
            raise TypeError(
                "Type unions may not contain more than one int-like type (`int`, `Enum`, `Literal[int values]`) "
                f"- type `{context}` is not supported"
            )
        if (flags & _STR_LIKE).bit_count() > 1:
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
        value = _unwrap(arg)
        if typing.get_origin(value) is typing.Literal:
            values.extend(_literal_values(value))
        elif isinstance(value, enum.Enum):
            values.append(value.value)
        else:
            values.append(value)
    return values


def _is_typeddict(annotation: Any) -> TypeIs[_TypedDictClass]:
    return isinstance(annotation, type) and issubclass(annotation, dict) and hasattr(annotation, "__required_keys__")


def _is_namedtuple(annotation: Any) -> TypeIs[_NamedTupleClass]:
    return isinstance(annotation, type) and issubclass(annotation, tuple) and hasattr(annotation, "_fields")


def _typeddict_info(cls: _TypedDictClass) -> _TypedDictInfo:
    hints = typing.get_type_hints(cls, include_extras=True)
    return _TypedDictInfo({name: _build(hint) for name, hint in hints.items()}, frozenset(cls.__required_keys__))


def _dataclass_info(cls: type[DataclassInstance]) -> _DataclassInfo:
    """Build (once per class, recursion-safe) how to decode a dataclass."""
    info = _dataclass_infos.get(cls)
    if info is not None:
        return info
    info = _DataclassInfo(cls)
    _dataclass_infos[cls] = info  # before its fields, which may refer to the class itself
    try:
        _collect_dataclass_fields(info, cls)
    except BaseException:
        del _dataclass_infos[cls]
        raise
    return info


def _collect_dataclass_fields(info: _DataclassInfo, cls: type[DataclassInstance]) -> None:
    hints = typing.get_type_hints(cls, include_extras=True)
    required: list[tuple[str, bool, Any, bool]] = []
    optional: list[tuple[str, bool, Any, bool]] = []
    for field in cls.__dataclass_fields__.values():
        # Only this private marker tells init-only and class variables from fields (as in msgspec).
        field_type = getattr(field, "_field_type", None)
        if field_type is dataclasses._FIELD_INITVAR:  # type: ignore[attr-defined]  # noqa: SLF001
            raise TypeError("dataclasses with `InitVar` fields are not supported")
        if field_type is not dataclasses._FIELD:  # type: ignore[attr-defined]  # noqa: SLF001
            continue
        info.fields[field.name] = _build(hints.get(field.name, field.type))
        if field.default is not dataclasses.MISSING:
            optional.append((field.name, False, field.default, False))
        elif field.default_factory is not dataclasses.MISSING:
            optional.append((field.name, False, field.default_factory, True))
        else:
            required.append((field.name, True, None, False))
    info.order = required + optional


def _build(annotation: Any) -> _TypeNode:
    if annotation is Any:
        return _ANY_NODE
    builder = _NodeBuilder(annotation)
    builder.collect(annotation)
    return builder.finish()
