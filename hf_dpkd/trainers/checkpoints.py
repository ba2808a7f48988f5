"""Checkpoints a run can resume from: only those the Trainer finished writing."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that the Trainer finished writing (trainer_state.json is its last
    file); folders a kill interrupted are removed so they are never resumed from."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = sorted(
        (p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()),
        key=lambda p: int(p.name.rsplit("-", 1)[-1]),
    )
    complete = [p for p in found if (p / "trainer_state.json").is_file()]
    for p in found:
        if p not in complete:
            logger.warning("Removing %s: a checkpoint whose writing was interrupted.", p)
            shutil.rmtree(p, ignore_errors=True)
    return str(complete[-1]) if complete else None
