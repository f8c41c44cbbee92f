"""Byte-for-byte and message-for-message comparison with the official SDK 0.66.0.

The same tables (`shapes.py`) are evaluated here with this runtime and by `sdk_helper.py` with the
official SDK (see `conftest.py`).
"""

from __future__ import annotations

from typing import Any

import pytest

import shapes
from tilebox.workflows._submissions import merge_future_tasks
from tilebox.workflows.cache import NoCache
from tilebox.workflows.context import ExecutionContext
from tilebox.workflows.data import CurrentTask, TaskIdentifier

SERIALIZE_CASES = shapes.serialize_cases()
DECODE_CASES = {name: (cls, data) for name, cls, data in shapes.decode_cases()}


def _describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


@pytest.mark.parametrize("name", list(SERIALIZE_CASES))
def serialized_bytes_match_the_official_sdk(name: str, sdk_results: dict[str, Any]) -> None:
    expected = sdk_results["serialize"][name]
    try:
        actual = {"hex": SERIALIZE_CASES[name]._serialize().hex()}  # noqa: SLF001
    except Exception as error:  # noqa: BLE001 -- the error is compared
        actual = {"error": _describe_error(error)}
    if "hex" in expected and "hex" in actual:
        assert bytes.fromhex(actual["hex"]) == bytes.fromhex(expected["hex"])
    assert actual == expected


@pytest.mark.parametrize("name", list(DECODE_CASES))
def decoded_tasks_and_errors_match_the_official_sdk(name: str, sdk_results: dict[str, Any]) -> None:
    cls, data = DECODE_CASES[name]
    try:
        actual = "ok: " + repr(cls._deserialize(data))
    except Exception as error:  # noqa: BLE001 -- the error is compared
        actual = "error: " + _describe_error(error)
    assert actual == sdk_results["decode"][name]


def _context() -> ExecutionContext:
    from tilebox.workflows._logging import StructuredLogger, task_logger  # noqa: PLC0415

    record = CurrentTask(id="t", identifier=TaskIdentifier("Root", "v0.0"))
    return ExecutionContext(record, NoCache(), StructuredLogger(task_logger))


@pytest.mark.parametrize("name", list(shapes.MERGE_SCENARIOS))
def merged_subtasks_match_the_official_sdk(name: str, sdk_results: dict[str, Any]) -> None:
    context = _context()
    shapes.MERGE_SCENARIOS[name](context)
    merged = merge_future_tasks(context._sub_tasks, "my-cluster")  # noqa: SLF001
    assert merged is not None
    expected = dict(sdk_results["merge"][name])
    expected.pop("protobuf_hex")
    actual = {
        **merged,
        "task_groups": [
            {**group, "inputs": [data.hex() for data in group["inputs"]]} for group in merged["task_groups"]
        ],
        "identifier_lookup": [list(identifier) for identifier in merged["identifier_lookup"]],
    }
    assert actual == expected


def worked_example_matches_the_reference_protobuf(sdk_results: dict[str, Any]) -> None:
    # The hex printed in reference §3.2; if the SDK agrees, so do we (compared above).
    assert sdk_results["merge"]["worked_example"]["protobuf_hex"] == (
        "0a1a1201311201321a020000220200002a020000320200003a0200000a140a010012001a01012201002a0101320100"
        "3a01000a151204226869221a01022201012a01023201033a01010a150a01011201331a01002201002a01003201003a"
        "0100120a6d792d636c7573746572120b6770752d636c75737465721a0c0a044c656166120476302e301a220a1a7469"
        "6c65626f782e636f6d2f6578616d706c652f526564756365120476312e331a0e0a064e6f74696679120476302e3022"
        "044c656166220652656475636522064e6f74696679"
    )


# Inputs that do not decode back to an equal task, by design of the format.
NOT_ROUND_TRIPS = {
    "one_proto": "raw protobuf bytes need a message class to decode",
    "floats": "NaN and infinities are written as null",
    "numbers": "NaN is written as null",
    "keys": "a NaN key never equals itself",
    "one_any_datetime": "datetimes the annotation does not name decode as strings",
    "native_datetimes": "datetimes the annotation does not name decode as strings",
    "untyped": "datetimes the annotation does not name decode as strings",
    "containers": "skip_serialization fields of nested dataclasses come back as defaults",
    "times": "isoformat writes offsets with seconds, which RFC 3339 decoding rejects",
}


@pytest.mark.parametrize(
    "name", [name for name in SERIALIZE_CASES if not name.startswith("unsupported") and name not in NOT_ROUND_TRIPS]
)
def serialized_inputs_decode_back_to_equal_tasks(name: str) -> None:
    task = SERIALIZE_CASES[name]
    assert type(task)._deserialize(task._serialize()) == task  # noqa: SLF001
