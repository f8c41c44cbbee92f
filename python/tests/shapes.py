"""Task shapes and inputs shared by our tests and the official-SDK helper.

This module is imported twice: by the tests (where `tilebox.workflows` is this repository's
runtime) and by `sdk_helper.py` in a venv with the official `tilebox-workflows==0.66.0`. Both
sides evaluate the same tables, so any difference in the output is a difference in behaviour.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Optional, Union
from zoneinfo import ZoneInfo

from tilebox.workflows import ExecutionContext, Task


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Inner:
    x: int
    label: str = "in"


@dataclass
class Stamped:
    when: datetime
    note: str = ""


@dataclass
class WithSkipped:
    keep: int
    drop: str = field(default="secret", metadata={"skip_serialization": True})


@dataclass(frozen=True)
class Frozen:
    a: int
    b: tuple[int, ...] = ()


@dataclass
class LateField:
    a: int
    computed: int = field(default=7, init=False)


@dataclass
class PostInit:
    a: int
    doubled: int = 0

    def __post_init__(self) -> None:
        self.doubled = self.a * 2


@dataclass
class Validated:
    a: int

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError("a must not be negative")


class FakeMessage:
    """Quacks like a protobuf message for the single-field envelope (raw bytes)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def SerializeToString(self) -> bytes:  # noqa: N802 -- protobuf's method name
        return self.payload


class Moment(datetime):
    """A datetime subclass: annotated as datetime it is still written with isoformat."""


class Shout(str):
    """A str subclass: msgspec does not encode these natively."""


# ---- task classes -------------------------------------------------------------------------------


class Empty(Task):
    pass


class OneStr(Task):
    message: str


class OneInt(Task):
    n: int


class OneFloat(Task):
    value: float


class OneList(Task):
    xs: list[int]


class OneOpt(Task):
    v: Optional[str] = None  # noqa: UP045 -- the Optional spelling is part of what is tested


class OneDT(Task):
    t: datetime


class OneDataclass(Task):
    inner: Inner


class OneProto(Task):
    message: Any


class OneAny(Task):
    value: Any


class OneBytes(Task):
    data: bytes


class Base(Task):
    a: int


class Child(Base):
    b: str = "x"


class SkipLeavesOne(Task):
    kept: str
    cache_key: str = field(default="k", metadata={"skip_serialization": True})


class AllSkipped(Task):
    hidden: int = field(default=3, metadata={"skip_serialization": True})


class Defaults(Task):
    a: int = 1
    b: str = "b"
    c: list[str] = field(default_factory=lambda: ["c"])
    d: Optional[float] = None  # noqa: UP045


class Everything(Task):
    s: str
    i: int
    f: float
    b: bool
    lst: list[str]
    d: dict[str, int]
    dt: datetime
    naive: datetime
    u: uuid.UUID
    nested: Inner
    opt: Optional[int]  # noqa: UP045
    color: Color
    ic: Level
    raw: bytes
    tup: tuple[int, str]
    st: set[int]
    dec: Decimal
    p: Path
    td: timedelta
    dd: date
    tt: time
    zi: ZoneInfo
    lit: Literal["a", "b"]
    skipped: str = field(default="never sent", metadata={"skip_serialization": True})
    default_val: float = 1.5


class NestedDatetimes(Task):
    a: list[datetime]
    b: Optional[datetime]  # noqa: UP045
    c: dict[str, datetime]
    d: Stamped
    e: str


class NativeDatetimes(Task):
    """Datetimes the annotations do not name: msgspec writes them itself (RFC 3339, `Z`)."""

    anything: Any
    mapping: dict[str, Any]
    items: list[Any]


class Floats(Task):
    values: list[float]
    single: float


class Strings(Task):
    values: list[str]
    key_escapes: dict[str, str]


class Keys(Task):
    ints: dict[int, str]
    floats: dict[float, str]
    uuids: dict[uuid.UUID, int]
    enums: dict[Color, int]
    int_enums: dict[Level, int]
    dates: dict[date, int]


class Unions(Task):
    either: Union[int, str]  # noqa: UP007
    maybe_time: Union[datetime, None]  # noqa: UP007
    maybe_inner: Optional[Stamped]  # noqa: UP045
    pipe: int | None
    multi: Union[list[int], str, None]  # noqa: UP007


class Containers(Task):
    fs: frozenset[int]
    vt: tuple[int, ...]
    nested: list[dict[str, list[int]]]
    inner_list: list[Inner]
    skipping: list[WithSkipped]
    frozen: Frozen
    late: LateField


class Durations(Task):
    values: list[timedelta]


class Times(Task):
    values: list[time]
    aware: datetime
    odd_offset: datetime


class Numbers(Task):
    big: int
    negative_big: int
    negative_zero: float
    specials: list[float]


class PrepareEdges(Task):
    """Annotations under which the SDK rewrites datetimes (and where it does not)."""

    opt_list: Optional[list[datetime]]  # noqa: UP045
    pair: tuple[datetime, int]
    by_key: dict[str, list[datetime]]
    either: Union[Stamped, int]  # noqa: UP007
    annotated: Annotated[datetime, "meta"]
    moments: frozenset[datetime]
    plain_inner: list[Inner]
    subclass_time: datetime


class PurePaths(Task):
    posix: PurePosixPath
    zone: ZoneInfo


class Untyped(Task):
    raw_list: list  # type: ignore[type-arg]  # bare annotations are the case under test
    raw_dict: dict  # type: ignore[type-arg]
    raw_tuple: tuple  # type: ignore[type-arg]


class Unsupported(Task):
    ok: int
    bad: Any


class ShoutTask(Task):
    ok: int
    words: list[Any]


class TupleKeys(Task):
    ok: int
    mapping: dict[Any, int]


class XY(Task):
    x: int
    y: float


class WithPostInit(Task):
    a: int
    b: int = 0

    def __post_init__(self) -> None:
        self.b = self.a + 100


class CustomInit(Task):
    """A hand-written __init__ (dataclass keeps it): the multi-field decode path bypasses it."""

    a: int
    b: int

    def __init__(self, a: int, b: int) -> None:
        self.a = a * 10
        self.b = b


class WithValidation(Task):
    inner: list[Validated]
    other: int = 0


class ManyInputs(Task):
    when: date
    moment: time
    span: timedelta
    ident: uuid.UUID
    amount: Decimal
    blob: bytes
    color: Color
    level: Level
    choice: Literal["a", "b"]
    post: PostInit
    zone: ZoneInfo
    where: Path


class RequiredSkipped(Task):
    a: int
    b: int
    skipped: str = field(metadata={"skip_serialization": True})


class OneTimeDelta(Task):
    span: timedelta


class OneDecimal(Task):
    amount: Decimal


class OneEnum(Task):
    color: Color


class OneLiteral(Task):
    choice: Literal["a", "b", 3]


class OneOptionalInt(Task):
    n: Optional[int]  # noqa: UP045


class OneUnion(Task):
    v: Union[int, str, None]  # noqa: UP007


class OneDict(Task):
    d: dict[int, list[str]]


class OneTuple(Task):
    t: tuple[int, str]


class OneInner(Task):
    inner: Inner


class OneDate(Task):
    d: date


class OneUUID(Task):
    u: uuid.UUID


class OneBool(Task):
    flag: bool


class OneSet(Task):
    values: set[int]


@dataclass
class Options:
    limit: int = 10
    verbose: bool = False
    tags: list[str] = field(default_factory=list)


class Scan(Task):
    area: str
    options: Options


class ScanMany(Task):
    options: list[Options]


class ScanOne(Task):
    options: Options


class ScanMaybe(Task):
    area: str
    options: Optional[Options] = None  # noqa: UP045 -- the SDK's own spelling is tested too


class Custom(Task):
    """Encodes itself: submissions carry `_serialize()`, whatever the fields are."""

    a: int
    b: str = "b"

    def _serialize(self) -> bytes:
        return f"custom:{self.a}:{self.b}".encode()

    @classmethod
    def _deserialize(cls, task_input: bytes, context: object = None) -> Custom:  # noqa: ARG003
        _, a, b = task_input.decode().split(":")
        return cls(int(a), b)


# ---- serialisation table ------------------------------------------------------------------------

_BERLIN = ZoneInfo("Europe/Berlin")
_PLUS_TWO = timezone(timedelta(hours=2))


def input_cases() -> dict[str, tuple[type, str, Any]]:
    """Name -> (task class, `task run --input` text, the task a user would construct for it):
    the input's bytes must equal the official SDK's submission of that task."""
    return {
        "input_nested_defaults": (Scan, '{"area": "x", "options": {}}', Scan("x", Options())),
        "input_nested_some": (
            Scan,
            '{"area": "x", "options": {"verbose": true}}',
            Scan("x", Options(verbose=True)),
        ),
        "input_list_of_defaults": (
            ScanMany,
            '{"options": [{}, {"limit": 3}]}',
            ScanMany([Options(), Options(limit=3)]),
        ),
        "input_list_wire_form": (ScanMany, '[{}, {"tags": ["a"]}]', ScanMany([Options(), Options(tags=["a"])])),
        "input_one_dataclass": (ScanOne, '{"options": {}}', ScanOne(Options())),
        "input_one_dataclass_wire_form": (ScanOne, '{"limit": 5}', ScanOne(Options(limit=5))),
        "input_optional_dataclass": (ScanMaybe, '{"area": "y", "options": {}}', ScanMaybe("y", Options())),
        "input_custom_serialize": (Custom, '{"a": 4}', Custom(4)),
    }


def serialize_cases() -> dict[str, Any]:
    """Name -> task instance whose input bytes must equal the official SDK's."""
    return {
        **{name: task for name, (_, _, task) in input_cases().items()},
        "empty": Empty(),
        "one_str": OneStr("hello"),
        "one_str_unicode": OneStr('a"bé\\\n\x01\x1f\x7f\u2028/😀'),
        "one_int": OneInt(42),
        "one_int_negative_big": OneInt(-(2**80)),
        "one_float": OneFloat(0.1),
        "one_float_integral": OneFloat(3.0),
        "one_list": OneList([1, 2, 3]),
        "one_opt_none": OneOpt(),
        "one_opt_value": OneOpt("v"),
        "one_dt_utc": OneDT(datetime(2024, 1, 2, 3, 4, 5, 678900, tzinfo=UTC)),
        "one_dt_plus_two": OneDT(datetime(2024, 1, 2, 3, 4, 5, tzinfo=_PLUS_TWO)),
        "one_dt_naive": OneDT(datetime(2024, 1, 2, 3, 4, 5)),
        "one_dt_zoneinfo": OneDT(datetime(2024, 7, 2, 3, 4, 5, 1, tzinfo=_BERLIN)),
        "one_dataclass": OneDataclass(Inner(x=3, label="in")),
        "one_proto": OneProto(FakeMessage(bytes.fromhex("0880e2cfaa061005"))),
        "one_any_datetime": OneAny(datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)),
        "one_any_dict": OneAny({"k": [1, 2.5, None, True, "s"]}),
        "one_bytes": OneBytes(b"\x00\x01\xff"),
        "inherited": Child(1),
        "inherited_set": Child(2, "y"),
        "skip_leaves_one": SkipLeavesOne("kept"),
        "all_skipped": AllSkipped(),
        "defaults": Defaults(),
        "everything": Everything(
            s='a"bé',
            i=-3,
            f=0.1,
            b=True,
            lst=["x", "y"],
            d={"k": 1},
            dt=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            naive=datetime(2024, 1, 2, 3, 4, 5),
            u=uuid.UUID("12345678-1234-5678-1234-567812345678"),
            nested=Inner(1, "z"),
            opt=None,
            color=Color.RED,
            ic=Level.LOW,
            raw=b"\x00\x01\xff",
            tup=(1, "a"),
            st={1, 2, 3},
            dec=Decimal("1.10"),
            p=Path("/a/b"),
            td=timedelta(seconds=90, microseconds=5),
            dd=date(2024, 1, 2),
            tt=time(1, 2, 3),
            zi=_BERLIN,
            lit="b",
        ),
        "nested_datetimes": NestedDatetimes(
            a=[datetime(2024, 1, 1, tzinfo=UTC)],
            b=None,
            c={"k": datetime(2024, 1, 1, 12, 0, 0, 1)},
            d=Stamped(datetime(2020, 5, 5, tzinfo=UTC), "n"),
            e="s",
        ),
        "native_datetimes": NativeDatetimes(
            anything=datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=UTC),
            mapping={"when": datetime(2024, 1, 2, tzinfo=_PLUS_TWO), "day": date(2024, 1, 2)},
            items=[datetime(2024, 1, 2), time(1, 2, 3, tzinfo=UTC), uuid.UUID(int=5)],
        ),
        "floats": Floats(
            values=[
                0.0,
                -0.0,
                1.0,
                0.1,
                1e16,
                1.2e16,
                1e15,
                999999999999999.9,
                9.999999999999999e15,
                123456789012345.6,
                1e-5,
                2.5e-5,
                9.99e-6,
                1e-6,
                1.5e-7,
                5e-324,
                1.7976931348623157e308,
                1.2345678901234568e17,
                12345678.9,
                0.0001234,
                -2.5,
                float("nan"),
                float("inf"),
                float("-inf"),
                1 / 3,
                2.0**60,
                100.0,
            ],
            single=-1e-7,
        ),
        "strings": Strings(
            values=["", "plain", "tab\tnew\nline", "\x00\x08\x0c\x0b\x1b", 'quote" back\\ slash/', "ünï©ødé ✓ 日本"],
            key_escapes={'k"ey\n': "v", "é": "\u2028"},
        ),
        "keys": Keys(
            ints={1: "a", -2: "b"},
            floats={1.5: "x", -0.0: "y", 1e20: "z", float("nan"): "n"},
            uuids={uuid.UUID(int=1): 2},
            enums={Color.GREEN: 1},
            int_enums={Level.HIGH: 3},
            dates={date(2020, 1, 1): 1},
        ),
        "unions": Unions(
            either="text",
            maybe_time=datetime(2024, 1, 2, tzinfo=UTC),
            maybe_inner=Stamped(datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)),
            pipe=None,
            multi=[1, 2],
        ),
        "containers": Containers(
            fs=frozenset({5}),
            vt=(1, 2, 3),
            nested=[{"a": [1]}, {}],
            inner_list=[Inner(1), Inner(2, "two")],
            skipping=[WithSkipped(1), WithSkipped(2, "visible?")],
            frozen=Frozen(1, (2, 3)),
            late=LateField(4),
        ),
        "durations": Durations(
            values=[
                timedelta(0),
                timedelta(seconds=90, microseconds=5),
                timedelta(days=1, seconds=3),
                timedelta(seconds=-1),
                timedelta(days=-1, seconds=5),
                timedelta(days=3),
                timedelta(microseconds=1),
                timedelta(microseconds=-1),
                timedelta(days=400, seconds=18061, microseconds=500000),
                timedelta(seconds=1.25),
                timedelta.max,
                timedelta.min,
            ]
        ),
        "times": Times(
            values=[
                time(1, 2, 3),
                time(1, 2, 3, 40),
                time(0, 0, tzinfo=UTC),
                time(23, 59, 59, 999999, tzinfo=_PLUS_TWO),
            ],
            aware=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
            odd_offset=datetime(2024, 1, 2, tzinfo=timezone(timedelta(hours=5, minutes=30, seconds=7))),
        ),
        "numbers": Numbers(big=2**70, negative_big=-(2**64), negative_zero=-0.0, specials=[float("nan"), 1e300]),
        "prepare_edges": PrepareEdges(
            opt_list=[datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2)],
            pair=(datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=_PLUS_TWO), 3),
            by_key={"k": [datetime(2001, 2, 3, tzinfo=UTC)]},
            either=7,
            annotated=datetime(2024, 1, 1, tzinfo=UTC),
            moments=frozenset({datetime(2024, 1, 1, tzinfo=UTC)}),
            plain_inner=[Inner(5)],
            subclass_time=Moment(2024, 1, 1, tzinfo=UTC),
        ),
        "pure_paths": PurePaths(PurePosixPath("rel/x.txt"), ZoneInfo("UTC")),
        "untyped": Untyped([1, "a", None], {"k": [datetime(2020, 1, 1, tzinfo=UTC)]}, (1, 2)),
        "unsupported_object": Unsupported(1, object()),
        "unsupported_str_subclass": ShoutTask(1, ["fine", Shout("loud")]),
        "unsupported_tuple_key": TupleKeys(1, {(1, 2): 3}),
        "unsupported_bool_key": TupleKeys(1, {True: 3}),
    }


# ---- decoding table -----------------------------------------------------------------------------


def decode_cases() -> list[tuple[str, type[Task], bytes]]:
    """(name, task class, input) whose decoded task (or error) must match the official SDK's."""
    return [
        ("xy_ok", XY, b'{"x":1,"y":2}'),
        ("xy_empty", XY, b""),
        ("xy_not_json", XY, b"not json"),
        ("xy_str_for_int", XY, b'{"x":"1","y":2}'),
        ("xy_missing_y", XY, b'{"x":1}'),
        ("xy_unknown_keys", XY, b'{"x":1,"y":2.5,"z":{"deep":[1,{"a":null}]}}'),
        ("xy_float_for_int", XY, b'{"x":1.0,"y":2}'),
        ("xy_bool_for_int", XY, b'{"x":true,"y":2}'),
        ("xy_array", XY, b"[1,2]"),
        ("xy_trailing_comma", XY, b'{"x":1,"y":2,}'),
        ("xy_trailing_chars", XY, b'{"x":1,"y":2} x'),
        ("xy_whitespace", XY, b' \n{ "x" : 1 ,\t"y" : 2 } \r\n'),
        ("xy_old_sdk_spacing", XY, b'{"x": 1, "y": 2.5}'),
        ("xy_missing_colon", XY, b'{"x" 1}'),
        ("xy_bad_key", XY, b"{x:1}"),
        ("xy_truncated", XY, b'{"x":1,"y":'),
        ("xy_big_float", XY, b'{"x":1,"y":1e400}'),
        ("xy_bad_number", XY, b'{"x":01,"y":2}'),
        ("xy_dangling_exponent", XY, b'{"x":1,"y":2e}'),
        ("one_int_ok", OneInt, b"5 "),
        ("one_int_object", OneInt, b'{"n":5}'),
        ("one_int_null", OneInt, b"null"),
        ("one_int_string", OneInt, b'"5"'),
        ("one_int_huge", OneInt, b"123456789012345678901234567890"),
        ("one_float_int", OneFloat, b"3"),
        ("one_float_nan", OneFloat, b"NaN"),
        ("one_float_null", OneFloat, b"null"),
        ("one_str_escapes", OneStr, b'"a\\u00e9\\ud83d\\ude00\\/\\b\\n"'),
        ("one_str_control", OneStr, b'"a\x01"'),
        ("one_str_bad_escape", OneStr, b'"\\x"'),
        ("one_str_lone_low_surrogate", OneStr, b'"\\udc00"'),
        ("one_str_bad_pair", OneStr, b'"\\ud800\\u0041"'),
        ("one_str_unterminated", OneStr, b'"abc'),
        ("one_str_raw_utf8", OneStr, '"ünï日本"'.encode()),
        ("one_list_bad_item", OneList, b'[1,"a"]'),
        ("one_list_trailing_comma", OneList, b"[1,]"),
        ("one_list_missing_comma", OneList, b"[1 2]"),
        ("one_opt_null", OneOpt, b"null"),
        ("one_opt_int", OneOpt, b"1"),
        ("one_dt_z", OneDT, b'"2024-01-02T03:04:05Z"'),
        ("one_dt_offset", OneDT, b'"2024-01-02T03:04:05.1234567+02:00"'),
        ("one_dt_space", OneDT, b'"2024-01-02 03:04:05"'),
        ("one_dt_round_up", OneDT, b'"2024-12-31T23:59:59.9999995"'),
        ("one_dt_invalid_month", OneDT, b'"2024-13-02T03:04:05"'),
        ("one_dt_compact_offset", OneDT, b'"2024-01-02T03:04:05-0130"'),
        ("one_dt_number", OneDT, b"1700000000"),
        ("one_dataclass", OneDataclass, b'{"x":3,"label":"in"}'),
        ("one_dataclass_missing", OneDataclass, b'{"label":"in"}'),
        ("one_dataclass_bad_field", OneDataclass, b'{"x":"3"}'),
        ("one_any", OneAny, b'{"a":[1,2.5,"x",null,true,{"b":-0}],"c":1e3}'),
        ("one_bytes", OneBytes, b'"AAH/"'),
        ("one_bytes_bad", OneBytes, b'"AAH"'),
        ("one_bytes_bad_char", OneBytes, b'"AA*/"'),
        ("empty_ignores_input", Empty, b"garbage"),
        ("all_skipped_ignores_input", AllSkipped, b"{]"),
        ("skip_leaves_one", SkipLeavesOne, b'"kept"'),
        ("inherited", Child, b'{"a":1,"b":"y"}'),
        ("inherited_default", Child, b'{"a":1}'),
        ("defaults", Defaults, b'{"b":"given"}'),
        ("defaults_empty_object", Defaults, b"{}"),
        ("post_init_runs", WithPostInit, b'{"a":1,"b":5}'),
        ("custom_init_bypassed", CustomInit, b'{"a":1,"b":2}'),
        ("nested_post_init_error", WithValidation, b'{"inner":[{"a":1},{"a":-1}],"other":2}'),
        ("many_inputs", ManyInputs, _MANY_INPUTS),
        ("many_bad_date", ManyInputs, _MANY_INPUTS.replace(b"2024-01-02", b"2024-02-30")),
        ("many_bad_time", ManyInputs, _MANY_INPUTS.replace(b"01:02:03.5Z", b"25:02:03")),
        ("many_bad_duration", ManyInputs, _MANY_INPUTS.replace(b"P1DT2H3M4.5S", b"P1M")),
        ("many_bad_uuid", ManyInputs, _MANY_INPUTS.replace(b"12345678-1234-5678-1234-567812345678", b"xyz")),
        ("many_bad_decimal", ManyInputs, _MANY_INPUTS.replace(b'"1.10"', b'"one"')),
        ("many_bad_enum", ManyInputs, _MANY_INPUTS.replace(b'"red"', b'"blue"')),
        ("many_bad_int_enum", ManyInputs, _MANY_INPUTS.replace(b'"level":2', b'"level":7')),
        ("many_bad_literal", ManyInputs, _MANY_INPUTS.replace(b'"choice":"a"', b'"choice":"c"')),
        ("many_bad_zone", ManyInputs, _MANY_INPUTS.replace(b'"Europe/Berlin"', b"5")),
        ("many_bad_path", ManyInputs, _MANY_INPUTS.replace(b'"/tmp/x"', b"5")),
        ("required_skipped", RequiredSkipped, b'{"a":1,"b":2}'),
        ("one_timedelta", OneTimeDelta, b'"-P1DT1.5S"'),
        ("one_timedelta_weeks", OneTimeDelta, b'"P1W"'),
        ("one_decimal_number", OneDecimal, b"1.10"),
        ("one_decimal_int", OneDecimal, b"3"),
        ("one_enum_bad_type", OneEnum, b"1"),
        ("one_literal_int", OneLiteral, b"3"),
        ("one_literal_bad_int", OneLiteral, b"4"),
        ("one_literal_bool", OneLiteral, b"true"),
        ("one_optional_int_str", OneOptionalInt, b'"x"'),
        ("one_union_float", OneUnion, b"1.5"),
        ("one_union_array", OneUnion, b"[]"),
        ("one_dict_int_keys", OneDict, b'{"1":["a"],"-2":[]}'),
        ("one_dict_bad_key", OneDict, b'{"x":[]}'),
        ("one_dict_bad_value", OneDict, b'{"1":["a",2]}'),
        ("one_tuple_ok", OneTuple, b'[1,"a"]'),
        ("one_tuple_short", OneTuple, b"[1]"),
        ("one_tuple_long", OneTuple, b'[1,"a",2]'),
        ("one_inner_array", OneInner, b"[]"),
        ("one_date_short", OneDate, b'"2024-1-02"'),
        ("one_uuid_hex", OneUUID, b'"12345678123456781234567812345678"'),
        ("one_bool_int", OneBool, b"1"),
        ("one_bool_truncated", OneBool, b"tru"),
        ("one_bool_bad", OneBool, b"trux"),
        ("one_set", OneSet, b"[3,1,3]"),
    ]


_MANY_INPUTS = (
    b'{"when":"2024-01-02","moment":"01:02:03.5Z","span":"P1DT2H3M4.5S",'
    b'"ident":"12345678-1234-5678-1234-567812345678","amount":"1.10","blob":"AAE=","color":"red","level":2,'
    b'"choice":"a","post":{"a":21},"zone":"Europe/Berlin","where":"/tmp/x"}'
)


# ---- subtask merging ----------------------------------------------------------------------------


class Leaf(Task):
    n: int

    def execute(self, context: ExecutionContext) -> None:
        pass


class Reduce(Task):
    @staticmethod
    def identifier() -> tuple[str, str]:
        return "tilebox.com/example/Reduce", "v1.3"

    def execute(self, context: ExecutionContext) -> None:
        pass


class Notify(Task):
    message: str

    def execute(self, context: ExecutionContext) -> None:
        pass


def merge_worked_example(context: Any) -> None:
    """The worked example of reference §3.2 (fallback cluster `my-cluster`)."""
    a = context.submit_subtask(Leaf(1))
    b = context.submit_subtask(Leaf(2))
    c = context.submit_subtask(Reduce(), depends_on=[a, b])
    context.submit_subtask(Notify("hi"), cluster="gpu-cluster", max_retries=3, optional=True)
    context.submit_subtask(Leaf(3), depends_on=c)


def merge_fan_in(context: Any) -> None:
    first = context.submit_subtask(Leaf(0))
    middle = context.submit_subtasks([Leaf(1), Leaf(2), Leaf(3)], depends_on=first)
    context.submit_subtask(Notify("done"), depends_on=middle, cluster="")


def merge_chain(context: Any) -> None:
    previous = context.submit_subtask(Leaf(0))
    for n in range(1, 3):
        previous = context.submit_subtask(Leaf(n), depends_on=[previous], max_retries=n)


def merge_diamond(context: Any) -> None:
    root = context.submit_subtask(Leaf(0))
    x = context.submit_subtask(Leaf(1), depends_on=root)
    context.submit_subtask(Leaf(2), depends_on=root)
    context.submit_subtask(Notify("z"), depends_on=x, optional=True)


MERGE_SCENARIOS = {
    "worked_example": merge_worked_example,
    "fan_in": merge_fan_in,
    "chain": merge_chain,
    "diamond": merge_diamond,
}
