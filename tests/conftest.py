"""Shared test setup: offline, single-threaded torch (the CI machine has 2 cores), tiny models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# One calibration cache per test session, shared with the pipeline runs it starts: hermetic, still warm.
os.environ.setdefault("HF_DPKD_CACHE", __import__("tempfile").mkdtemp(prefix="hf_dpkd_cache_"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One finished `--quick` pipeline run, shared by every test that needs one: (run_dir, process, seconds)."""
    import time

    from tests.pipeline_runs import run_quick

    run_dir = tmp_path_factory.mktemp("quick") / "run"
    start = time.time()
    proc = run_quick(run_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir, proc, time.time() - start
