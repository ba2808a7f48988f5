"""The pipeline's stages in run order: the one list that the runner, `--stages` and `--help` read.

Stage <name> is the module hf_dpkd/pipeline/stages/<name>.py; its `run(ctx) -> dict` does the work (`ctx`: a
hf_dpkd.pipeline.context.RunContext) and returns a small JSON-ready summary for the stage's marker. This module
only names them (a stage module loads on first use), so hf_dpkd.run_config can read the list without a cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

STAGES = ("data", "histogram", "teacher", "generate", "students", "evaluate", "audit", "push")


def stage(name: str) -> Callable[[Any], dict[str, Any]]:
    """The `run(ctx)` function of the stage `name`."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}.")
    return importlib.import_module(f"{__name__}.{name}").run
