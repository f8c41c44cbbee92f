"""Typed decoding: `Decoder`, and the parser that walks JSON straight into the annotated type.

The parser is one recursive walker with a method per JSON production, dispatching on the first
byte of each value like msgspec, so errors surface in the order msgspec raises them. Unknown
fields of dataclasses and TypedDicts are skipped by the same walker: it walks them against
`_SKIP`, which builds nothing and reports malformed input the way msgspec's skipper does.
"""

from __future__ import annotations

import decimal
import enum
import re
import typing
from collections.abc import Callable, Iterator
from typing import Any

from tilebox.workflows._json.errors import (
    _KEY,
    _VALUE,
    DecodeError,
    Path,
    ValidationError,
    _hook_error,
    _invalid,
    _path_suffix,
    _type_name,
)
from tilebox.workflows._json.text import (
    _NumberText,
    _parse_base64,
    _parse_date,
    _parse_datetime,
    _parse_decimal,
    _parse_time,
    _parse_timedelta,
    _parse_uuid,
)
from tilebox.workflows._json.typenodes import (
    _ANY_NODE,
    _BINARY,
    _CUSTOMS,
    ANY,
    BOOL,
    BYTES,
    CUSTOM_GENERIC,
    DATACLASS,
    DATE,
    DATETIME,
    DECIMAL,
    DICT,
    ENUM,
    FALSE_LITERAL,
    FIXTUPLE,
    FLOAT,
    FROZENSET,
    INT,
    INTENUM,
    INTLITERAL,
    LIST,
    MEMORYVIEW,
    NAMEDTUPLE,
    NONE,
    SET,
    STR,
    STRLITERAL,
    TIME,
    TIMEDELTA,
    TRUE_LITERAL,
    TYPEDDICT,
    UUID,
    VARTUPLE,
    _build,
    _build_lock,
    _TypeNode,
)

__all__ = ["DecHook", "Decoder"]

DecHook = Callable[[type, Any], Any]

_WHITESPACE = b" \t\n\r"
_STRING_SPECIAL = re.compile(rb'["\\\x00-\x1f]')
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

# Walking a value against `_SKIP` validates it and passes over it without building it (unknown
# fields). It has no flags, so no typed branch accepts it: each production checks for it where it
# would otherwise reject the value. Its readers report errors like msgspec's skipper, which words
# a few of them differently from its parser and reports some at another offset.
_SKIP = _TypeNode()


def _expected(node: _TypeNode, got: str, path: Path) -> ValidationError:
    return ValidationError(f"Expected `{node.describe()}`, got `{got}`{_path_suffix(path)}")


def _lookup(table: dict[Any, Any] | None, enum_cls: type[enum.Enum] | None, value: Any, path: Path) -> Any:
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


class _Parser:
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

    def value(self, node: _TypeNode, path: Path) -> Any:
        char = self.peek()
        if char == 0x6E:  # n
            self.null(node, path)
            value = None
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

    def skip(self) -> None:
        """Validate and pass over one value (an unknown field), with msgspec's skip-path messages."""
        self.value(_SKIP, ())

    def custom(self, value: Any, node: _TypeNode, path: Path) -> Any:
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
            raise ValidationError(f"Expected `{_type_name(cls)}`, got `{_type_name(type(value))}`{_path_suffix(path)}")
        return value

    def literal(self, word: bytes, skipping: bool) -> None:
        """Consume `word` (whose first byte was already checked).

        A mismatch is reported after the word by msgspec's parser, at its second byte when skipping.
        """
        self.pos += 1
        rest = word[1:]
        if self.end - self.pos < len(rest):
            raise self.truncated()
        if self.data[self.pos : self.pos + len(rest)] != rest:
            if not skipping:
                self.pos += len(rest)
            raise self.malformed("invalid character")
        self.pos += len(rest)

    def null(self, node: _TypeNode, path: Path) -> None:
        self.literal(b"null", node is _SKIP)
        if node.flags & (ANY | NONE) or node is _SKIP:
            return
        raise _expected(node, "null", path)

    def true(self, node: _TypeNode, path: Path) -> bool:
        self.literal(b"true", node is _SKIP)
        if node.flags & (ANY | BOOL | TRUE_LITERAL) or node is _SKIP:
            return True
        if node.flags & FALSE_LITERAL:
            raise _invalid("Invalid enum value True", path)
        raise _expected(node, "bool", path)

    def false(self, node: _TypeNode, path: Path) -> bool:
        self.literal(b"false", node is _SKIP)
        if node.flags & (ANY | BOOL | FALSE_LITERAL) or node is _SKIP:
            return False
        if node.flags & TRUE_LITERAL:
            raise _invalid("Invalid enum value False", path)
        raise _expected(node, "bool", path)

    # ---- strings --------------------------------------------------------------------------------

    def string_bytes(self, skipping: bool = False) -> bytes:
        """Parse a string (at `"`) and return its unescaped UTF-8 bytes.

        When skipping, two malformed escapes are worded like msgspec's skipper, which also reports
        an unknown escape at the escaped character rather than after it.
        """
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
            if escape in _UNESCAPE:
                self.pos += 1
                unescaped += _UNESCAPE[escape]
            elif escape == 0x75:  # \uXXXX
                self.pos += 1
                unescaped += chr(self.unicode_escape(skipping)).encode("utf-8")
            elif skipping:
                raise self.malformed("invalid escaped character")
            else:
                self.pos += 1
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

    def unicode_escape(self, skipping: bool) -> int:
        point = self.codepoint()
        if 0xDC00 <= point <= 0xDFFF:
            raise self.malformed("invalid utf-16 surrogate pair")
        if 0xD800 <= point <= 0xDBFF:
            if self.end - self.pos < 6:
                raise self.truncated()
            if self.data[self.pos : self.pos + 2] != b"\\u":
                if skipping:
                    raise self.malformed("unexpected end of hex escape")
                raise self.malformed("unexpected end of escaped utf-16 surrogate pair")
            self.pos += 2
            low = self.codepoint()
            if not 0xDC00 <= low <= 0xDFFF:
                raise self.malformed("invalid utf-16 surrogate pair")
            point = 0x10000 + (((point - 0xD800) << 10) | (low - 0xDC00))
        return point

    def string(self, node: _TypeNode, path: Path) -> Any:  # noqa: C901, PLR0911 -- one branch per string-encoded type
        raw = self.string_bytes(node is _SKIP)
        flags = node.flags
        if flags & (STR | ANY):
            return raw.decode("utf-8")
        if node is _SKIP:
            return None
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

    def dict_key(self, node: _TypeNode, path: Path) -> Any:  # noqa: C901, PLR0911 -- msgspec's key types, in its order
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

    def number(self, node: _TypeNode, path: Path) -> Any:
        scanner = _NumberText(self.data, start=self.pos, skipping=node is _SKIP)
        parsed = scanner.parse()
        self.pos = scanner.pos
        if parsed is None:
            raise self.malformed(scanner.error)
        if node is _SKIP:
            return None
        return self.number_value(parsed, node, path, from_str=False)

    @staticmethod
    def number_value(parsed: tuple[str, bool], node: _TypeNode, path: Path, from_str: bool) -> Any:  # noqa: C901, PLR0911, PLR0912 -- msgspec's number rules
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

    def items(self) -> Iterator[int]:
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

    def array(self, node: _TypeNode, path: Path) -> Any:  # noqa: PLR0911
        flags = node.flags
        if flags & ANY:
            return [self.value(_ANY_NODE, (*path, index)) for index in self.items()]
        if flags & (LIST | SET | FROZENSET | VARTUPLE):
            item = node.array
            assert item is not None  # noqa: S101 -- set whenever one of these flags is
            if flags & LIST:
                return [self.value(item, (*path, index)) for index in self.items()]
            if flags & (SET | FROZENSET):
                items = {self.value(item, (*path, index)) for index in self.items()}
                return items if flags & SET else frozenset(items)
            return tuple([self.value(item, (*path, index)) for index in self.items()])
        if flags & FIXTUPLE:
            return self.fixed_tuple(node, path)
        if flags & NAMEDTUPLE:
            return self.named_tuple(node, path)
        if node is _SKIP:
            for _ in self.items():
                self.skip()
            return None
        raise _expected(node, "array", path)

    def fixed_tuple(self, node: _TypeNode, path: Path) -> tuple[Any, ...]:
        size = len(node.fixtuple)
        values = []
        for index in self.items():
            if index >= size:
                raise _invalid(f"Expected `array` of length {size}", path)
            values.append(self.value(node.fixtuple[index], (*path, index)))
        if len(values) < size:
            raise _invalid(f"Expected `array` of length {size}", path)
        return tuple(values)

    def named_tuple(self, node: _TypeNode, path: Path) -> tuple[Any, ...]:
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
        for index in self.items():
            if index >= size:
                raise _invalid(message, path)
            values.append(self.value(info.nodes[index], (*path, index)))
        if len(values) < required:
            raise _invalid(message, path)
        values.extend(info.defaults[len(values) - required :])
        return info.cls(*values)

    # ---- objects --------------------------------------------------------------------------------

    def members(self, skipping: bool = False) -> Iterator[None]:
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
            elif skipping:
                raise self.malformed("expected '\"'")
            else:
                raise self.malformed("object keys must be strings")

    def colon(self) -> None:
        if self.peek() != 0x3A:
            raise self.malformed("expected ':'")
        self.pos += 1

    def object(self, node: _TypeNode, path: Path) -> Any:
        flags = node.flags
        if flags & ANY:
            return self.mapping(_ANY_NODE, _ANY_NODE, path)
        if flags & DICT:
            key_node, value_node = node.dict_key, node.dict_value
            assert key_node is not None  # noqa: S101 -- set whenever DICT is
            assert value_node is not None  # noqa: S101 -- set whenever DICT is
            return self.mapping(key_node, value_node, path)
        if flags & TYPEDDICT:
            return self.typed_dict(node, path)
        if flags & DATACLASS:
            return self.dataclass(node, path)
        if node is _SKIP:
            for _ in self.members(skipping=True):
                self.string_bytes(skipping=True)
                self.colon()
                self.skip()
            return None
        raise _expected(node, "object", path)

    def mapping(self, key_node: _TypeNode, value_node: _TypeNode, path: Path) -> dict[Any, Any]:
        out = {}
        key_path, value_path = (*path, _KEY), (*path, _VALUE)
        for _ in self.members():
            key = self.dict_key(key_node, key_path)
            self.colon()
            out[key] = self.value(value_node, value_path)
        return out

    def typed_dict(self, node: _TypeNode, path: Path) -> dict[str, Any]:
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

    def dataclass(self, node: _TypeNode, path: Path) -> Any:
        info = node.dataclass
        assert info is not None  # noqa: S101 -- set whenever DATACLASS is
        out: Any
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
