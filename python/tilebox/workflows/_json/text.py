"""Scanners for text inside JSON: numbers, and the scalars msgspec encodes as strings.

`_NumberText` scans one JSON number (of the input, of a skipped value, or of a dict key's string)
the way msgspec does, with its error messages. The `_parse_*` functions turn the text of a JSON
string into a datetime, date, time, duration, UUID, decimal or bytes with msgspec's strict rules
and `ValidationError` messages.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import uuid
from typing import TYPE_CHECKING

from tilebox.workflows._json.errors import Path, _invalid
from tilebox.workflows._json.typenodes import BYTEARRAY, BYTES

if TYPE_CHECKING:
    from tilebox.workflows._json.typenodes import _TypeNode

_DIGITS = frozenset(b"0123456789")


class _NumberText:
    """Scan one JSON number like msgspec's `parse_number_inline`.

    `parse()` returns `(text, is_float)` or None with `error` set ("invalid number" or
    "invalid character") and `pos` where msgspec reports it. `from_str` scans a dict key's text
    (the whole text, and also `nan`/`inf`); `skipping` scans a skipped value the way msgspec's
    skipper does, which differs in one message: a `-` ending the input is an invalid character.
    """

    def __init__(self, source: bytes | str, start: int = 0, *, from_str: bool = False, skipping: bool = False) -> None:
        self.data = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source
        self.start = start
        self.pos = start
        self.end = len(self.data)
        self.from_str = from_str
        self.skipping = skipping
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
                self.fail("invalid character" if self.skipping else "invalid number")
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

    def __init__(self, text: str, start: int) -> None:  # noqa: C901, PLR0911, PLR0912, PLR0915 -- msgspec's scanner
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


def _parse_datetime(text: str, path: Path) -> datetime.datetime:
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


def _parse_date(text: str, path: Path) -> datetime.date:
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


def _parse_time(text: str, path: Path) -> datetime.time:
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


def _parse_timedelta(text: str, path: Path) -> datetime.timedelta:  # noqa: C901, PLR0912, PLR0915
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


def _parse_uuid(text: str, path: Path) -> uuid.UUID:
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


def _parse_decimal(text: str, path: Path) -> decimal.Decimal:
    try:
        return decimal.Decimal(text)
    except (decimal.InvalidOperation, ValueError):
        raise _invalid("Invalid decimal string", path) from None


_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _parse_base64(raw: bytes, node: _TypeNode, path: Path) -> bytes | bytearray | memoryview:
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
