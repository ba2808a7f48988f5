"""The user cache's folders: ``$HF_DPKD_CACHE`` (``off`` disables it), else ``$XDG_CACHE_HOME/hf_dpkd`` or
``~/.cache/hf_dpkd``. It only ever holds what public inputs determine (noise calibrations, public base models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path | None:
    """The cache folder of `kind` ("calibration", "base_models"), or None when ``HF_DPKD_CACHE=off``."""
    root = os.environ.get("HF_DPKD_CACHE")
    if root is not None and root.strip().lower() in ("", "off", "0", "false", "none"):
        return None
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hf_dpkd"
    return Path(root) / kind
