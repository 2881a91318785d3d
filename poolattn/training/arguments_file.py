"""train.py's arguments from one JSON file (`python train.py args.json`): read, and every value checked against the
type of its flag before the argument dataclasses see it, as the command line's parser converts and checks each flag.

>>> from poolattn.training.trainer_arguments import TrainingRunArguments
>>> check_value_types({"max_steps": "5"}, [TrainingRunArguments], "args.json")
Traceback (most recent call last):
...
ValueError: args.json: "max_steps" is "5", a string; give a whole number (e.g. 5, without quotes).
"""

import dataclasses
import enum
import json
import types
import typing
from pathlib import Path


def read_arguments_file(path: str) -> dict:
    """The JSON object of an arguments file; a `ValueError` naming the file when it is unreadable or no object."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON arguments file ({error}).") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: an arguments file holds one JSON object of flag names and values.")
    return values


def check_value_types(values: dict, kinds, source: str, *, objects: tuple[str, ...] = ()) -> None:
    """Raise `ValueError` for the first value whose JSON type its flag does not take (`"max_steps": "5"`, `"bf16":
    "false"`, `"seeds": 2.5`): given to the dataclasses as they are, such values failed with a bare `TypeError`, or
    were taken as something else (the string "false" is true). A whole number for a text flag becomes its text, as on
    the command line (`"variant": 5`); the flags in `objects` (JSON-object flags) take an object itself too. Keys no
    dataclass has are left to the parser."""
    hints = {}
    for kind in kinds:
        resolved = typing.get_type_hints(kind)
        hints.update({item.name: resolved[item.name] for item in dataclasses.fields(kind) if item.init})
    hints.update({name: hints[name] | dict for name in objects})
    for key, value in values.items():
        if key in hints and _fits(str(value), hints[key]) and type(value) is int and not _fits(value, hints[key]):
            values[key] = value = str(value)  # a number for a text flag (`"variant": 5`), as the command line reads it
        if key in hints and not _fits(value, hints[key]):
            raise ValueError(
                f'{source}: "{key}" is {json.dumps(value)}, {_json_kind(value)}; give {_describe(hints[key])}.'
            )


def _fits(value, kind) -> bool:
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, argument) for argument in arguments)
    if kind is type(None):
        return value is None
    if kind in (bool, int, float, str):
        allowed = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[kind]
        return isinstance(value, allowed) and (kind is bool or not isinstance(value, bool))
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return isinstance(value, kind) or value in {member.value for member in kind}
    if origin is typing.Literal:
        return value in arguments
    if list in (kind, origin):
        return isinstance(value, list) and all(_fits(item, arguments[0]) for item in value if arguments)
    if dict in (kind, origin):
        return isinstance(value, dict)
    return True  # a type the command line does not take either: left to the dataclass


def _describe(kind) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(argument) for argument in typing.get_args(kind)))
    names = {
        bool: "true or false (a JSON boolean, without quotes)",
        int: "a whole number (e.g. 5, without quotes)",
        float: "a number (e.g. 0.0001, without quotes)",
        str: "a string",
        type(None): "null",
    }
    if kind in names:
        return names[kind]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in kind)
    return "a list" if list in (kind, typing.get_origin(kind)) else "an object"


def _json_kind(value) -> str:
    for kind, name in ((bool, "a boolean"), (int, "a whole number"), (float, "a number"), (str, "a string")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else "a list" if isinstance(value, list) else "an object"
