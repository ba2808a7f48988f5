"""Control-coded synthetic data: prompt format, sharded resumable generation, the Trainer callback, quality.

Names load lazily: ``hf_dpkd.privacy.histogram`` imports ``control_codes`` from here, and ``generation``
imports the histogram, so importing everything eagerly would be circular.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ControlCodeFormat": "control_codes",
    "SyntheticGenerationConfig": "generation",
    "BatchedNoRepeatNGramLogitsProcessor": "generation_decoding",
    "generate_synthetic_dataset": "generation",
    "load_synthetic_dataset": "generation",
    "SyntheticDataCallback": "callback",
    "quality_report": "quality",
    "write_quality_report": "quality",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
