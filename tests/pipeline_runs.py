"""Running `examples/run_dpkd.py --quick` in a subprocess, shared by the pipeline and fault tests."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "examples" / "run_dpkd.py"


def quick_env() -> dict[str, str]:
    """The environment of a child run, read at call time (fixtures may have pointed it at a Hub).

    Without the tests' DS_ACCELERATOR: a child sees what a user's shell has, so its console is a user's.
    """
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def quick_command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--quick", "--run_dir", str(run_dir), "--cpu_threads", "1", *extra]


def run_quick(run_dir: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        quick_command(run_dir, *extra), env=quick_env(), capture_output=True, text=True, timeout=timeout
    )
