"""Task inputs typed by hand (`tilebox task run --input`): an object of the task's fields, or a
one-field task's wire form, encoded as a submission of the constructed task (`_serialize()`) is,
byte for byte the official SDK's; unknown keys are errors at every level."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import shapes
from tilebox.workflows import Task
from tilebox.workflows._serialization import InputError, encode_input, serialize_task


class One(Task):
    x: int


class Two(Task):
    a: int
    b: str = "d"


class When(Task):
    at: datetime


class Config(Task):
    config: dict[str, int]


class Nothing(Task):
    pass


@pytest.mark.parametrize(
    ("cls", "text", "task"),
    [
        (One, '{"x": 1}', One(1)),
        (One, "1", One(1)),
        (Two, '{"b": "q", "a": 2}', Two(2, "q")),
        (Two, '{"a": 2}', Two(2)),
        (When, '{"at": "2024-01-01T00:00:00Z"}', When(datetime(2024, 1, 1, tzinfo=UTC))),
        (Config, '{"config": {"a": 1}}', Config({"a": 1})),
        (Config, '{"a": 1}', Config({"a": 1})),
        (Config, '{"config": 1}', Config({"config": 1})),
        # What the CLI sends for `--input ''` (empty text stays empty): no input.
        (Nothing, "", Nothing()),
        (Nothing, "  ", Nothing()),
        (Nothing, "{}", Nothing()),
    ],
)
def test_fields_and_wire_forms_encode_as_the_sdk_serialises_the_task(cls: type, text: str, task: Task) -> None:
    assert encode_input(cls, text) == serialize_task(task)


@pytest.mark.parametrize(
    ("cls", "text", "message"),
    [
        (One, '{"y": 1}', "task One has no field 'y'; expected fields: x"),
        (Two, '{"a": 1, "c": 2}', "task Two has no field 'c'; expected fields: a, b"),
        (Two, '{"b": "x"}', "task Two needs field 'a'; expected fields: a, b"),
        (Two, "3", "task Two takes an object of its fields a, b, but got '3'"),
        (One, '{"x": "1"}', "field 'x' of task One: Expected `int`, got `str`"),
        (One, '"s"', "input '\"s\"' is not a value of field 'x' of task One"),
        (Nothing, "1", "task Nothing takes no input"),
        (Nothing, '""', "task Nothing takes no input"),
        # Objects are strict at every level where the type is a dataclass.
        (
            shapes.Scan,
            '{"area": "x", "options": {"limt": 99}}',
            "task Scan has no field 'options.limt'; expected fields of options (Options): limit, verbose, tags",
        ),
        (
            shapes.ScanMany,
            '{"options": [{}, {"verbos": true}]}',
            "task ScanMany has no field 'options[1].verbos'; expected fields of options[1] (Options)",
        ),
        (
            shapes.ScanMaybe,
            '{"area": "x", "options": {"limit": 1, "x": 2}}',
            "task ScanMaybe has no field 'options.x'",
        ),
        # A one-field task: a typo is neither its object of fields nor its field's value.
        (
            shapes.ScanOne,
            '{"options": {"limt": 99}}',
            "task ScanOne has no field 'options.limt'; expected fields of options (Options): limit, verbose, tags",
        ),
        (
            shapes.ScanOne,
            '{"option": {"limit": 99}}',
            (
                "task ScanOne has no field 'option'; expected fields: options "
                "(nor is the object a value of 'options' alone: task ScanOne has no field 'options.option'"
            ),
        ),
        (shapes.ScanMany, '[{"limt": 3}]', "input '[{\"limt\": 3}]' is not a value of field 'options'"),
        (One, "{broken", "input for task One is not JSON"),
    ],
)
def test_inputs_that_do_not_fit_the_task_name_the_task_and_its_fields(cls: type, text: str, message: str) -> None:
    with pytest.raises(InputError) as raised:
        encode_input(cls, text)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize("name", list(shapes.input_cases()))
def test_inputs_encode_as_the_official_sdk_submits_the_constructed_task(name: str, sdk_results: dict[str, Any]) -> None:
    cls, text, _ = shapes.input_cases()[name]
    assert encode_input(cls, text) == bytes.fromhex(sdk_results["serialize"][name]["hex"])
