"""A disk cache of noise calibrations, so a repeated DP training does not redo the bisection.

Calibrating a noise multiplier takes 20-30 accountant evaluations (5-8 s with PRV on a 2-core machine),
and the same calibration recurs: every draw of a repeated run, every resumed run, every epsilon sweep that
shares a schedule. The cache only proposes a value: `calibrate_noise_multiplier` re-checks it with one
accountant evaluation before using it, so a stale or corrupted entry costs time, never the guarantee.

Where: ``$HF_DPKD_CACHE`` (set it to ``off`` to disable), else ``$XDG_CACHE_HOME/hf_dpkd`` or
``~/.cache/hf_dpkd``; one small JSON file per calibration. A cache that cannot be written is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from hf_dpkd._cache import cache_dir as user_cache_dir
from hf_dpkd._io import atomic_write_text

logger = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """The calibration cache's folder, or None when ``HF_DPKD_CACHE=off``."""
    return user_cache_dir("calibration")


def calibration_key(**inputs: Any) -> str:
    """A digest of everything the calibrated value depends on (inputs, accountant library version)."""
    import opacus

    payload = json.dumps({**inputs, "opacus": opacus.__version__}, sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def lookup(key: str) -> float | None:
    """The cached noise multiplier of `key`, or None (missing, unreadable or not a positive number)."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        value = float(json.loads((folder / f"{key}.json").read_text())["noise_multiplier"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if value > 0 else None


def store(key: str, noise_multiplier: float, inputs: dict[str, Any]) -> None:
    """Remember a calibration (with its inputs, for a reader of the file); silently skipped if not writable."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        text = json.dumps({"noise_multiplier": noise_multiplier, "inputs": inputs}, default=repr)
        atomic_write_text(folder / f"{key}.json", text)
    except OSError as e:
        logger.debug("calibration cache not written (%s)", e)
