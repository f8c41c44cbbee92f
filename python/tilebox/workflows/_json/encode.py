"""The encoder: compact JSON byte for byte like `msgspec.json.Encoder`.

Also msgspec's text layouts of floats (shortest round-trip digits), datetimes (RFC 3339) and
durations (ISO 8601), which dict keys share with values.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import math
import re
import typing
import uuid
from collections.abc import Callable
from typing import Any

from tilebox.workflows._json.errors import _type_name

__all__ = ["EncHook", "encode", "format_date", "format_datetime", "format_float", "format_time", "format_timedelta"]


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
    if not math.isfinite(value):
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
    if math.isnan(value):
        return "nan"
    if value == float("inf"):
        return "inf"
    if value == float("-inf"):
        return "-inf"
    return format_float(value)


def _format_time(value: datetime.datetime | datetime.time, at: datetime.datetime | None) -> str:
    text = f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    tzinfo = value.tzinfo
    if tzinfo is None:
        return text
    if tzinfo is datetime.UTC:
        return text + "Z"
    return text + _format_offset(tzinfo.utcoffset(at))


def _format_offset(offset: object) -> str:
    """A UTC offset as msgspec writes it: `Z`, `+HH:MM` or `-HH:MM` (nothing for no offset).

    Like msgspec: whole seconds only, rounded to the nearest minute (exactly 30 s rounds down).
    """
    if offset is None:
        return ""
    if not isinstance(offset, datetime.timedelta):
        raise TypeError("tzinfo.utcoffset returned a non-timedelta object")
    days, seconds = offset.days, offset.seconds
    if seconds == 0:
        return "Z"
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
        return "Z"
    return f"{sign}{offset_hour:02d}:{offset_minute:02d}"


def format_datetime(value: datetime.datetime) -> str:
    """RFC 3339 as msgspec writes it: `Z` for UTC, offsets as `+HH:MM`, 6 fraction digits."""
    date = f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    return f"{date}T{_format_time(value, value)}"


def format_date(value: datetime.date) -> str:
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def format_time(value: datetime.time) -> str:
    return _format_time(value, None)


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
    # mypy sees `type.__getattribute__` bound to `cls`; it is the attribute lookup of the class's instances.
    standard_getattr = cls.__getattribute__ is object.__getattribute__  # type: ignore[comparison-overlap]
    instance_dict = getattr(value, "__dict__", None) if standard_getattr else None
    items = []
    for name in fields:
        if type(name) is not str:
            continue
        if not standard_getattr:
            try:
                item = getattr(value, name)
            except AttributeError:
                continue  # unset: left out
            items.append((name, item))
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
                        item = descriptor_type.__get__(descriptor, value, cls)
                    except AttributeError:
                        break  # an unset slot: left out
                    items.append((name, item))
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
        elif isinstance(value, uuid.UUID) or kind is decimal.Decimal:
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

    def key(self, key: Any) -> str:  # noqa: C901, PLR0911, PLR0912 -- msgspec's key rules, in order
        kind = type(key)
        if kind is str:
            return typing.cast("str", key)
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
