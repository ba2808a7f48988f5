"""``--control_domain``: the public values of each control-code column, declared without the private data."""

from __future__ import annotations

import json
from pathlib import Path


def parse_control_domain(value: str | dict) -> dict[str, list[str]]:
    """`--control_domain`: a JSON file {column: [values]}, inline ``column=v1|v2;column2=a|b``, or a JSON object.

    A value ending in ``.json``, or holding no ``=``, is a file; one starting with ``{`` is JSON text (a YAML
    recipe may give a mapping); anything else is the inline list. Values become stripped strings (as the
    loaders write control values: a JSON 5.0 is "5.0"). Every error names the argument and the fix.
    """
    hint = (
        'give a JSON file {"column": ["value", ...]} or inline \'column=v1|v2;column2=a|b\' (use a file when '
        "a value holds ';', '|' or '=')"
    )
    text = "" if isinstance(value, dict) else str(value).strip()
    if isinstance(value, dict):
        raw = value
    elif text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--control_domain {value!r}: not valid JSON ({e}); {hint}.") from None
    elif text.lower().endswith(".json") or "=" not in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"--control_domain {value!r}: no such file; {hint}.")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(
                f"--control_domain {value!r}: not a valid UTF-8 JSON file ({e}); {hint}."
            ) from None
    else:
        raw = {}
        for part in text.split(";"):
            if not part.strip():
                continue
            column, sep, values = part.partition("=")
            if not sep:
                raise ValueError(f"--control_domain {value!r}: {part.strip()!r} has no '='; {hint}.")
            column = column.strip()
            if column in raw:
                raise ValueError(
                    f"--control_domain {value!r}: column {column!r} is given twice; list it once."
                )
            raw[column] = values.split("|")
    if not isinstance(raw, dict):
        raise ValueError(
            f"--control_domain {value!r}: holds a {type(raw).__name__}, not an object {{column: [values]}}; "
            f"{hint}."
        )
    if not raw:
        raise ValueError(f"--control_domain {value!r}: declares no column; {hint}.")
    domain: dict[str, list[str]] = {}
    for column, values in raw.items():
        column = str(column).strip()
        if not column:
            raise ValueError(f"--control_domain {value!r}: a column name is empty; {hint}.")
        if not isinstance(values, list) or any(
            isinstance(v, bool) or not isinstance(v, str | int | float) for v in values
        ):
            raise ValueError(
                f"--control_domain {value!r}: the values of {column!r} must be a list of strings or numbers; {hint}."
            )
        vals = [str(v).strip() for v in values]
        if not vals or any(not v for v in vals):
            raise ValueError(
                f"--control_domain {value!r}: column {column!r} has an empty value list or an empty value; "
                "list every value the column can take."
            )
        dup = sorted({v for v in vals if vals.count(v) > 1})
        if dup:
            raise ValueError(
                f"--control_domain {value!r}: column {column!r} repeats {dup}; list each value once."
            )
        domain[column] = vals
    return domain
