"""A pure-Python reproduction of msgspec 0.22's JSON dialect.

The official SDK writes task inputs with `msgspec.json.Encoder` and reads them with a typed
`msgspec.json.Decoder(strict=True)`. msgspec is a C extension that refuses to load in an isolated
sub-interpreter, so this package reproduces the parts the SDK relies on, byte for byte on the
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

Modules:

* `encode`: the encoder, and msgspec's float, datetime and duration layouts.
* `typenodes`: annotations compiled into `_TypeNode`s (the shapes a type accepts, msgspec's union rules).
* `decode`: `Decoder` and the parser, one walker for typed values and for skipped unknown fields.
* `text`: scanners for text inside JSON: numbers, and string-encoded datetimes, durations, uuids,
  decimals and base64.
* `errors`: the error classes, and the `- at `$.path`` suffix of validation messages.
"""

from tilebox.workflows._json.decode import DecHook, Decoder
from tilebox.workflows._json.encode import (
    EncHook,
    encode,
    format_date,
    format_datetime,
    format_float,
    format_time,
    format_timedelta,
)
from tilebox.workflows._json.errors import DecodeError, MsgspecError, ValidationError

__all__ = [
    "DecHook",
    "DecodeError",
    "Decoder",
    "EncHook",
    "MsgspecError",
    "ValidationError",
    "encode",
    "format_date",
    "format_datetime",
    "format_float",
    "format_time",
    "format_timedelta",
]
