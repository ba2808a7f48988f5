"""The one place that formats and parses control-code prompts.

Paper format: the control fields joined by a tab, then a blank line, then the text:
``Business Category: Restaurants\\tReview Stars: 5.0\\n\\n<text><eos>``. The teacher's training texts
and the generator's prompts both come from :class:`ControlCodeFormat`, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ControlCodeFormat:
    """`fields`: (dataset column, display label) pairs, e.g. [("category", "Business Category")]."""

    fields: tuple[tuple[str, str], ...]
    field_separator: str = "\t"
    key_value_separator: str = ": "
    prompt_end: str = "\n\n"
    _labels: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        pairs = tuple((str(c), str(label)) for c, label in self.fields)
        if not pairs:
            raise ValueError("ControlCodeFormat needs at least one (column, label) field.")
        columns = [c for c, _ in pairs]
        if len(set(columns)) != len(columns):
            raise ValueError(f"ControlCodeFormat fields repeat a column: {columns}.")
        for _, label in pairs:
            self._check_value("label", label)
        object.__setattr__(self, "fields", pairs)
        object.__setattr__(self, "_labels", {label: col for col, label in pairs})

    @property
    def columns(self) -> list[str]:
        return [c for c, _ in self.fields]

    def _check_value(self, column: str, value: str) -> None:
        for sep in (
            self.field_separator,
            "\n",
            self.key_value_separator.strip() and self.key_value_separator,
        ):
            if sep and sep in value:
                raise ValueError(
                    f"Control code {column}={value!r} contains the separator {sep!r}, which would make the "
                    "prompt ambiguous; clean the value (e.g. replace tabs/newlines by spaces) before training."
                )

    def code_of(self, record: Mapping[str, Any]) -> tuple[str, ...]:
        """The record's control code as a tuple of string values, in field order."""
        values = []
        for column, _ in self.fields:
            if column not in record:
                raise KeyError(
                    f"Control field {column!r} is missing from the record (columns: {sorted(record)}); "
                    "pass control columns that exist in the dataset."
                )
            value = str(record[column])
            self._check_value(column, value)
            values.append(value)
        return tuple(values)

    def format_prompt(self, record: Mapping[str, Any]) -> str:
        """`Label: value<TAB>Label: value\\n\\n` for a record (or a dict column -> value)."""
        code = self.code_of(record)
        parts = [f"{label}{self.key_value_separator}{v}" for (_, label), v in zip(self.fields, code)]
        return self.field_separator.join(parts) + self.prompt_end

    def format_training_text(self, record: Mapping[str, Any], text: str, eos_token: str = "") -> str:
        """The teacher's training sequence: prompt + text + eos."""
        return self.format_prompt(record) + text + eos_token

    def parse_prompt(self, prompt: str) -> dict[str, str]:
        """Inverse of :meth:`format_prompt` (the trailing prompt end is optional)."""
        if prompt.endswith(self.prompt_end):
            prompt = prompt[: -len(self.prompt_end)]
        out: dict[str, str] = {}
        for part in prompt.split(self.field_separator):
            label, sep, value = part.partition(self.key_value_separator)
            if not sep or label not in self._labels:
                raise ValueError(
                    f"Cannot parse control-code part {part!r}; expected one of {list(self._labels)}."
                )
            out[self._labels[label]] = value
        missing = [c for c in self.columns if c not in out]
        if missing:
            raise ValueError(f"Prompt {prompt!r} lacks control field(s) {missing}.")
        return out

    def split_text(self, full: str) -> tuple[dict[str, str], str]:
        """Split a formatted training text into (codes, text)."""
        head, sep, text = full.partition(self.prompt_end)
        if not sep:
            raise ValueError("Text has no control-code prompt end.")
        return self.parse_prompt(head), text

    def to_dict(self) -> dict[str, Any]:
        return {
            "fields": [list(f) for f in self.fields],
            "field_separator": self.field_separator,
            "key_value_separator": self.key_value_separator,
            "prompt_end": self.prompt_end,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ControlCodeFormat:
        return cls(
            fields=tuple(tuple(f) for f in data["fields"]),
            field_separator=data.get("field_separator", "\t"),
            key_value_separator=data.get("key_value_separator", ": "),
            prompt_end=data.get("prompt_end", "\n\n"),
        )
