"""The DistilDP pipeline: stages over one run directory, each resumable and skipped once done.

  stages/          one module per stage, `run(ctx) -> dict`; stages/__init__.py lists them in run order
  runner.py        Pipeline: runs the stages not yet done, times them, checks the run's settings
  context.py       RunContext: the run directory's layout, private data, ledgers, secret DP seed, given inputs
  trainer_factory  build_trainer: every Trainer the stages build;  training.py: train, save, mark finished
  loading.py       base models, tokenizers, tokenized records;  cards.py: model cards of the run's folders
  report.py        results.md / results.png / audit.md;  constants.py: names the modules share

The names below load on first use: hf_dpkd.run_config reads the stage list from .stages, and these modules
read run_config, so importing them here would be circular.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Pipeline": ("runner", "Pipeline"),
    "RunContext": ("context", "RunContext"),
    "STAGES": ("stages", "STAGES"),
    "build_trainer": ("trainer_factory", "build_trainer"),
    "COMPLETE": ("constants", "COMPLETE"),
    "NEVER_PUSHED": ("constants", "NEVER_PUSHED"),
    "STUDENT_METHODS": ("constants", "STUDENT_METHODS"),
    "METHOD_LABELS": ("constants", "METHOD_LABELS"),
    "ensure_pad_token": ("loading", "ensure_pad_token"),
    "load_model_and_tokenizer": ("loading", "load_model_and_tokenizer"),
    "LONG_SEQUENCE_NOTICE": ("loading", "LONG_SEQUENCE_NOTICE"),
    "_tokenize_for_lm": ("loading", "tokenize_for_lm"),
    "audit_markdown": ("report", "audit_markdown"),
    "audit_summary_lines": ("report", "audit_summary_lines"),
    "epsilon_cell": ("report", "epsilon_cell"),
    "results_markdown": ("report", "results_markdown"),
    "plot_results": ("report", "plot_results"),
}
__all__ = [name for name in _EXPORTS if not name.startswith("_")]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
