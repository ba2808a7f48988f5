"""What a setting field may declare, and the base class of the argument dataclasses that enforces it.

- A ``Literal`` field has fixed choices: HfArgumentParser gives them argparse ``choices`` (listed in --help,
  refused on the command line) and :class:`Arguments` refuses the same values from a recipe or a direct
  construction.
- A ``list[str]`` field is list-valued: the command line takes one or more values (``--methods a b``), and a
  comma-separated string (``--methods a,b``, ``methods: a,b`` in a recipe) is split into the same list.
- ``metadata={"neutral": True}`` marks a setting that does not change what the stages compute (where to push,
  which stages to run, how much to print): a run directory may be resumed with another value of it.
"""

from __future__ import annotations

import functools
from dataclasses import Field, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints


def one_of(choices: tuple[str, ...]) -> str:
    """'a, b or c' for an error message."""
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


@functools.cache
def choices_of(cls: type) -> dict[str, tuple[str, ...]]:
    """The choices of each Literal field of the dataclass `cls`."""
    hints = get_type_hints(cls)
    return {f.name: get_args(hints[f.name]) for f in fields(cls) if get_origin(hints[f.name]) is Literal}


def _is_str_list(hint: Any) -> bool:
    if get_origin(hint) is list:
        return get_args(hint) == (str,)
    return any(_is_str_list(arg) for arg in get_args(hint) if arg is not type(None))


@functools.cache
def list_fields(cls: type) -> tuple[str, ...]:
    """The ``list[str]`` (or ``list[str] | None``) fields of the dataclass `cls`."""
    hints = get_type_hints(cls)
    return tuple(f.name for f in fields(cls) if _is_str_list(hints[f.name]))


def split_list(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """A list setting's values: every comma-separated part of a string or of each list item, stripped."""
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


#: Metadata keys of the project's own; HfArgumentParser passes every other key to argparse's add_argument.
OWN_METADATA = ("neutral", "generation")


class SettingMetadata(dict):
    """Field metadata holding the project's own keys too, hidden from ``keys()``: HfArgumentParser turns the
    listed keys into argparse's keyword arguments, so any HfArgumentParser still parses these dataclasses,
    while ``metadata.get("neutral")`` reads them."""

    def keys(self):
        return [k for k in super().keys() if k not in OWN_METADATA]

    def copy(self) -> dict[str, Any]:
        return {k: self[k] for k in self.keys()}


def setting(**metadata: Any) -> SettingMetadata:
    """Field metadata: ``help`` and argparse's keys, and the project's own (``neutral``, ``generation``)."""
    return SettingMetadata(metadata)


def neutral(**metadata: Any) -> SettingMetadata:
    """Field metadata of a setting that does not change results: ``field(metadata=neutral(help=...))``."""
    return setting(neutral=True, **metadata)


def is_neutral(f: Field) -> bool:
    return bool(f.metadata.get("neutral", False))


class Arguments:
    """Base of the argument dataclasses: Literal fields hold one of their choices, list fields a list.

    argparse enforces `choices` on the command line only; a recipe (set as parser defaults), parse_dict or a
    direct construction reaches the dataclass unchecked, so the check is here. A list field given as a
    comma-separated string (a recipe, a single command-line token, dataclasses.replace) is split here.
    """

    def __post_init__(self):
        for name in list_fields(type(self)):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, split_list(value))
        for name, choices in choices_of(type(self)).items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"--{name} {value!r}: choose {one_of(choices)}.")
