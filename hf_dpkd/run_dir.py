"""One run directory per pipeline run: an exclusive lock, and a marker per finished stage.

A stage's marker (``stages/<name>.json``) is written atomically and last, after every artifact of the
stage is in place; a stage without a marker is unfinished and is resumed (or redone) on the next run.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from hf_dpkd._io import atomic_write_text

LOCK_NAME = ".lock"


class RunDirLockedError(RuntimeError):
    """Another process holds the run directory."""


class RunDirMismatchError(ValueError):
    """The run directory was produced with other settings."""


class RunDir:
    """The pipeline's run directory. Use as a context manager to hold its lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_file = None

    # -- locking ----------------------------------------------------------------------------------
    def __enter__(self) -> RunDir:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the run directory's lock; a second process on the same run dir is refused, not mixed in."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / LOCK_NAME, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunDirLockedError(
                f"run_dir={str(self.path)!r} is in use by {holder}. Wait for it to finish, or pass another "
                "--run_dir; two processes writing one run directory would corrupt it."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._lock_file = f

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- stages -----------------------------------------------------------------------------------
    def stage_marker(self, stage: str) -> Path:
        return self.path / "stages" / f"{stage}.json"

    def is_done(self, stage: str) -> bool:
        return self.stage_marker(stage).is_file()

    def stage_result(self, stage: str) -> dict[str, Any] | None:
        marker = self.stage_marker(stage)
        return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None

    def mark_done(self, stage: str, result: dict[str, Any]) -> None:
        atomic_write_text(self.stage_marker(stage), json.dumps(result, indent=2, sort_keys=True, default=str))

    def __truediv__(self, other: str) -> Path:
        return self.path / other
