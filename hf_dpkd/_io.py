"""Atomic file writes: a kill never leaves a half-written artifact that looks finished."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes, secret: bool = False) -> Path:
    """Write `data` to a temporary file in the same directory, fsync it, then rename over `path`.

    `secret` files (the DP seed and state) are readable by their owner only (mode 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600 if secret else 0o666 & ~_UMASK)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"No space left on the device of {str(path.parent)!r} while writing {path.name!r}. Nothing was "
                "half-written; free some space (or choose another output/run directory) and re-run the same "
                "command: finished work is kept.",
            ) from e
        raise
    return path


def atomic_write_text(path: str | Path, text: str, secret: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), secret=secret)
