"""The one place that formats and parses control-code prompts.

Paper format: the control fields joined by a tab, then a blank line, then the text:
``Business Category: Restaurants\\tReview Stars: 5.0\\n\\n<text><eos>``. The teacher's training texts
and the generator's prompts both come from :class:`ControlCodeFormat`, so they cannot drift apart.

Values are never escaped: a value holding a separator (the field separator, a newline, the key/value
separator or the prompt end) is rejected with an error naming the field, because an escaped value would
be a different string to the teacher than the one the user wrote. Clean such values before training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ControlCodeFormat:
    """How control codes are written in front of a text.

    `fields`: (dataset column, display label) pairs in prompt order, e.g.
    ``[("category", "Business Category"), ("stars", "Review Stars")]``. `domain` optionally declares the
    PUBLIC list of values of each column (used by the histogram builders so that the set of codes does
    not come from the private data).
    """

    fields: Sequence[tuple[str, str]]
    field_separator: str = "\t"
    key_value_separator: str = ": "
    prompt_end: str = "\n\n"
    domain: Mapping[str, Sequence[str]] | None = None
    _by_label: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        try:
            pairs = tuple((str(c), str(label)) for c, label in self.fields)
        except (TypeError, ValueError):
            raise ValueError(
                f"fields={self.fields!r} must be (column, label) pairs, e.g. [('category', 'Business Category')]."
            ) from None
        if not pairs:
            raise ValueError("fields=[] : ControlCodeFormat needs at least one (column, label) pair.")
        for name in ("field_separator", "key_value_separator", "prompt_end"):
            if not getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a non-empty string.")
        columns = [c for c, _ in pairs]
        labels = [label for _, label in pairs]
        for what, names in (("column", columns), ("label", labels)):
            if len(set(names)) != len(names):
                raise ValueError(f"fields repeat a {what}: {names}; each must appear once.")
        for column, label in pairs:
            self.check_value(f"label of {column!r}", label)
        object.__setattr__(self, "fields", pairs)
        object.__setattr__(self, "_by_label", dict(zip(labels, columns)))
        if self.domain is not None:
            domain = {}
            for column in columns:
                values = self.domain.get(column)
                if not values:
                    raise ValueError(
                        f"domain[{column!r}]={values!r}: declare at least one public value for every control "
                        "field (or pass domain=None)."
                    )
                domain[column] = [str(v) for v in values]
                for v in domain[column]:
                    self.check_value(column, v)
            unknown = sorted(set(self.domain) - set(columns))
            if unknown:
                raise ValueError(f"domain names column(s) {unknown} that are not control fields {columns}.")
            object.__setattr__(self, "domain", domain)

    @property
    def columns(self) -> list[str]:
        """The dataset columns of the control fields, in prompt order."""
        return [c for c, _ in self.fields]

    def _separators(self) -> list[str]:
        return [self.field_separator, "\n", "\r", self.key_value_separator, self.prompt_end]

    def check_value(self, column: str, value: str) -> None:
        """Raise ValueError if `value` holds a separator (the prompt could not be parsed back)."""
        for sep in self._separators():
            if sep in value:
                raise ValueError(
                    f"Control field {column}={value!r} contains the separator {sep!r}, which would make the "
                    "prompt ambiguous; clean the value (e.g. replace tabs/newlines/colons by spaces) first."
                )

    def code_of(self, record: Mapping[str, Any]) -> tuple[str, ...]:
        """The record's control code as a tuple of string values, in field order (values are validated)."""
        values = []
        for column, _ in self.fields:
            if column not in record:
                raise KeyError(
                    f"Control field {column!r} is missing from the record (it has {sorted(record)}); "
                    "pass control columns that exist in the dataset, or fix ControlCodeFormat.fields."
                )
            value = str(record[column])
            self.check_value(column, value)
            values.append(value)
        return tuple(values)

    def record_of(self, code: Sequence[Any]) -> dict[str, str]:
        """The dict column -> value of a code tuple (inverse of :meth:`code_of`)."""
        if len(code) != len(self.fields):
            raise ValueError(f"code={tuple(code)!r} has {len(code)} values; the format has {self.columns}.")
        return dict(zip(self.columns, (str(v) for v in code)))

    def format_prompt(self, record: Mapping[str, Any]) -> str:
        """``Label: value<TAB>Label: value\\n\\n`` for a record (a dataset row or a dict column -> value)."""
        code = self.code_of(record)
        parts = [f"{label}{self.key_value_separator}{v}" for (_, label), v in zip(self.fields, code)]
        prompt = self.field_separator.join(parts) + self.prompt_end
        # Separators can also form across a label/value boundary (custom separators): check the round trip.
        try:
            ok = self.parse_prompt(prompt) == dict(zip(self.columns, code))
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"Control field values {dict(zip(self.columns, code))} make the prompt {prompt!r} ambiguous with "
                f"field_separator={self.field_separator!r}, key_value_separator={self.key_value_separator!r}: "
                "it would parse back differently; clean the values or choose other separators."
            )
        return prompt

    def format_training_text(self, record: Mapping[str, Any], text: str, eos_token: str | None = "") -> str:
        """The teacher's training sequence: prompt + text + eos (used by the teacher's collator)."""
        return self.format_prompt(record) + text + (eos_token or "")

    def parse_prompt(self, prompt: str) -> dict[str, str]:
        """Inverse of :meth:`format_prompt`: dict column -> value (the trailing prompt end is optional)."""
        if prompt.endswith(self.prompt_end):
            prompt = prompt[: -len(self.prompt_end)]
        out: dict[str, str] = {}
        for part in prompt.split(self.field_separator):
            label, sep, value = part.partition(self.key_value_separator)
            if not sep or label not in self._by_label:
                raise ValueError(
                    f"Cannot parse control-code part {part!r} of prompt {prompt!r}: expected "
                    f"'<label>{self.key_value_separator}<value>' with a label in {list(self._by_label)}."
                )
            column = self._by_label[label]
            if column in out:
                raise ValueError(f"Prompt {prompt!r} repeats control field {label!r}.")
            out[column] = value
        missing = [c for c in self.columns if c not in out]
        if missing:
            raise ValueError(f"Prompt {prompt!r} lacks control field(s) {missing}.")
        return {c: out[c] for c in self.columns}

    def split_text(self, full: str) -> tuple[dict[str, str], str]:
        """Split a formatted training text into (codes, text)."""
        head, sep, text = full.partition(self.prompt_end)
        if not sep:
            raise ValueError(
                f"Text {full[:80]!r} has no prompt end {self.prompt_end!r}: it is not control-coded."
            )
        return self.parse_prompt(head), text

    def prompt_length(self, record: Mapping[str, Any], tokenizer) -> int:
        """Number of tokens of the record's prompt, as the teacher sees it (special tokens included)."""
        return len(tokenizer(self.format_prompt(record))["input_ids"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "fields": [list(f) for f in self.fields],
            "field_separator": self.field_separator,
            "key_value_separator": self.key_value_separator,
            "prompt_end": self.prompt_end,
            "domain": None if self.domain is None else {c: list(v) for c, v in self.domain.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ControlCodeFormat:
        return cls(
            fields=[tuple(f) for f in data["fields"]],
            field_separator=data.get("field_separator", "\t"),
            key_value_separator=data.get("key_value_separator", ": "),
            prompt_end=data.get("prompt_end", "\n\n"),
            domain=data.get("domain"),
        )
