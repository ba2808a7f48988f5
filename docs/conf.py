"""Sphinx configuration of the hf_dpkd documentation site (MyST markdown, built-in alabaster theme).

Build it the way the tests do (warnings are errors)::

    python -m sphinx -W --keep-going -b html docs /tmp/hf_dpkd-docs
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # autodoc imports hf_dpkd from this checkout

# autodoc imports the package (transformers, datasets, ...): never reach the network while building.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

project = "hf_dpkd"
author = "hf_dpkd contributors"
copyright = "hf_dpkd contributors"
release = version = importlib.import_module("hf_dpkd").__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns: list[str] = []  # every page under docs/ is part of the site

# MyST: `page.md#section` links resolve to heading anchors (levels 1-3).
myst_heading_anchors = 3

# autodoc: Google-style docstrings (napoleon); only what the project itself defines.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# An override without a docstring (e.g. DPTrainer.train) must not pull in the transformers docstring of the
# method it overrides: the reference documents what this package adds, nothing inherited.
autodoc_inherit_docstrings = False

html_theme = "alabaster"
html_title = "hf_dpkd"
html_static_path: list[str] = []


def _field_help(app, what, name, obj, options, lines):
    """Document the fields a configuration dataclass adds, with the `help` text `--help` prints.

    DPConfig, DistillationConfig and the pipeline's argument classes document their fields in
    ``field(metadata={"help": ...})``, as HfArgumentParser expects, not in docstrings. Each field the class
    itself declares (inherited TrainingArguments fields are left out) becomes an ``attribute`` entry of the
    class, with its type (a ``Literal`` field: its choices), its default and that text.
    """
    if what != "class" or not dataclasses.is_dataclass(obj):
        return
    if (obj.__doc__ or "").startswith(f"{obj.__name__}("):
        lines.clear()  # the signature dataclasses writes when a class has no docstring
    own = obj.__dict__.get("__annotations__", {})
    fields = {f.name: f for f in dataclasses.fields(obj)}
    try:
        hints = typing.get_type_hints(obj)
    except Exception:  # an annotation autodoc cannot resolve: show it as written
        hints = {}
    entries = []
    for name in own:  # source order
        f = fields.get(name)
        help_text = f.metadata.get("help") if f is not None else None
        if not help_text:
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = None
        hint = hints.get(name)
        if typing.get_origin(hint) is typing.Literal:  # a setting with fixed choices: list them
            kind = f"Literal[{', '.join(repr(c) for c in typing.get_args(hint))}]"
        else:
            kind = f.type
        entries += ["", f".. attribute:: {f.name}", f"   :type: {kind}"]
        if default is not None:
            entries.append(f"   :value: {default}")
        entries += ["", f"   {help_text}"]
    if entries:
        lines += ["", ".. rubric:: Fields", *entries, ""]


def setup(app):
    app.connect("autodoc-process-docstring", _field_help)
