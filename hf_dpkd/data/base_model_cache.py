"""Finished demo base models found before pretraining one: shipped with the package, or kept in the user cache.

Pretraining the demo's two public base models is most of the demo's first minutes on a 2-core machine (the
teacher's 200 steps alone: 150-190 s). They depend on public inputs only (the generated public split, the
tokenizer learnt from it, the settings), all summed up in the fingerprint `build_demo_models` computes. So:

- the package ships the base models of the default demo (``hf_dpkd/data/base_models/``, rebuilt by
  ``python -m hf_dpkd.pipeline.ship_base_models``), used when the fingerprint matches;
- every other base model pretrained here is kept in ``$HF_DPKD_CACHE/base_models/<fingerprint>`` and reused by
  the next run with the same settings (another run folder, each draw of ``--repeats``, a test session).

Nothing private is ever cached here: a base model sees the public split only (see `hf_dpkd.data.models`).
``HF_DPKD_CACHE=off`` turns both lookups off: every base model is then pretrained in the run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from hf_dpkd._cache import cache_dir
from hf_dpkd._io import atomic_write_text

logger = logging.getLogger(__name__)

#: Written last in a finished base-model folder; it records the settings and the fingerprint.
COMPLETE = "READY"
#: The base models shipped with the package (one folder per kind), built by hf_dpkd.pipeline.ship_base_models.
SHIPPED = Path(__file__).parent / "base_models"


def fingerprint_of(folder: Path) -> str | None:
    """The fingerprint recorded in `folder`'s READY marker, or None (no marker, unreadable)."""
    try:
        return json.loads((folder / COMPLETE).read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _candidates(fingerprint: str) -> list[tuple[Path, str]]:
    if cache_dir("base_models") is None:  # HF_DPKD_CACHE=off: nothing reused from outside the run
        return []
    found = [(folder, "shipped with hf_dpkd") for folder in sorted(SHIPPED.glob("*")) if folder.is_dir()]
    return [*found, (cache_dir("base_models") / fingerprint, "the user cache")]


def find(fingerprint: str) -> tuple[Path, str] | None:
    """A finished base-model folder with this fingerprint and where it comes from, or None."""
    for folder, source in _candidates(fingerprint):
        if fingerprint_of(folder) == fingerprint:
            return folder, source
    return None


def copy_finished(source: Path, out: Path, origin: str) -> None:
    """Copy a finished base-model folder to `out`, its marker last (a kill never leaves a finished-looking copy)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and item.name != COMPLETE:
            shutil.copyfile(item, out / item.name)
    record = json.loads((source / COMPLETE).read_text())
    atomic_write_text(out / COMPLETE, json.dumps({**record, "copied_from": origin}, indent=2))


def keep(folder: Path, fingerprint: str) -> None:
    """Put a finished base-model folder into the user cache (skipped when off, unwritable or already there)."""
    root = cache_dir("base_models")
    if root is None or fingerprint_of(root / fingerprint) == fingerprint:
        return
    try:
        if (root / fingerprint).exists():  # a partial copy left by a kill
            shutil.rmtree(root / fingerprint)
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{fingerprint[:12]}.", dir=root))
        copy_finished(folder, staging, "a pretraining run")
        try:
            os.replace(staging, root / fingerprint)  # atomic; a concurrent writer's identical copy may win
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        logger.debug("base model not cached (%s)", e)
