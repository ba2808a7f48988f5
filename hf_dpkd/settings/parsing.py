"""Recipes and the command line into a RunConfig.

Precedence, lowest first: dataclass defaults, the ``--quick`` preset, the YAML recipe (``--config``),
command-line flags. Unknown recipe keys and malformed YAML are errors that name the key or the line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from hf_dpkd.settings.checks import validate_run_config
from hf_dpkd.settings.config import ARGUMENT_CLASSES, RunConfig
from hf_dpkd.settings.presets import QUICK


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such recipe file (see recipes/ for examples).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path}: malformed YAML: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--config {path}: not a UTF-8 text file.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path}: a recipe is a mapping of argument names to values, got {type(data).__name__}."
        )
    return data


def _typed_recipe(parser: HfArgumentParser, recipe: dict[str, Any], path: str | None) -> dict[str, Any]:
    """Recipe values converted as the command line converts them (a YAML `seed: abc` fails like `--seed abc`)."""
    actions = {a.dest: a for a in parser._actions}
    typed = {}
    for key, value in recipe.items():
        if key == "control_domain" and isinstance(value, dict):
            value = json.dumps(value)  # a YAML mapping {column: [values]}: kept as JSON text
        action = actions[key]
        convert = action.type
        if value is None or not callable(convert):
            typed[key] = value
            continue
        try:
            if action.nargs == "+":  # a list setting: a YAML list, or one comma-separated string
                typed[key] = [convert(str(v)) for v in (value if isinstance(value, list) else [value])]
            else:
                typed[key] = convert(str(value).lower() if isinstance(value, bool) else str(value))
        except (TypeError, ValueError):
            kind = getattr(convert, "__name__", "value")
            raise ValueError(
                f"--config {path}: {key}: {value!r} is not a valid {kind}; fix the recipe (see --help for {key})."
            ) from None
    return typed


def parse_run_config(argv: list[str] | None = None) -> RunConfig:
    """Parse defaults < --quick preset < YAML recipe (--config) < command-line flags into a RunConfig."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a path to a YAML recipe, e.g. --config recipes/demo.yaml.")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    parser = HfArgumentParser(
        ARGUMENT_CLASSES, description="DistilDP: DP teacher -> synthetic data -> student."
    )
    known = {a.dest for a in parser._actions}
    recipe = load_recipe(config_path) if config_path else {}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(
            f"--config {config_path}: unknown recipe key(s) {', '.join(unknown)}; run with --help for every field."
        )
    quick = bool(recipe.get("quick", False)) or any(
        a in ("--quick", "--quick=True", "--quick=true") for a in argv
    )
    if quick:
        parser.set_defaults(**QUICK)
    parser.set_defaults(**_typed_recipe(parser, recipe, config_path))
    parts = parser.parse_args_into_dataclasses(args=argv)
    config = RunConfig(*parts)
    validate_run_config(config)
    return config
