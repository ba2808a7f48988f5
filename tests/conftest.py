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

from tests.doc_snippets import DocPages  # noqa: E402

torch.set_num_threads(1)


def pytest_pycollect_makeitem(collector, name, obj):
    """A `DocPages` object of a test module (tests/test_docs.py) is collected as one Sybil file per page."""
    if isinstance(obj, DocPages):
        return obj.collect(collector)
    return None


def pytest_collection_finish(session):
    """Imports and collected tests live as long as the session: out of the garbage collector's view, so the
    full gc.collect() that starts every Trainer.train() (accelerate's free_memory) walks only what tests make
    (0.2-0.3 s less per training; about 40 s of a 2-core run)."""
    import gc

    gc.collect()
    gc.freeze()


#: The test files that take longest (`--durations`; 25-150 s each on a 2-core machine), handed to the xdist
#: workers first, longest first, so that the run does not end with one worker alone on a long file (with
#: `--no-loadscope-reorder`, pyproject.toml; xdist would otherwise order files by their number of tests).
#: The first builds the shared `--quick` run; the second needs none, so no worker waits for it at the start.
SLOW_FILES_FIRST = (
    "test_synthetic_quality.py",
    "test_docs.py",
    "test_pipeline.py",
    "test_faults.py",
    "test_audit_intervals.py",
    "test_user_level.py",
    "test_audit_dp.py",
    "test_generation.py",
    "test_distillation_deepspeed.py",
    "test_lora_teacher.py",
    "test_dp_trainer.py",
    "test_dp_opd.py",
    "test_synthetic.py",
    "test_draws.py",
    "test_accounting.py",
)


def pytest_collection_modifyitems(config, items):
    """SLOW_FILES_FIRST first, in that order; every other file after them, in collection order (a stable sort:
    the tests of a file keep their order)."""
    here = os.path.dirname(__file__)
    stale = [name for name in SLOW_FILES_FIRST if not os.path.isfile(os.path.join(here, name))]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW_FILES_FIRST names missing files: {stale}")
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (the default, pyproject.toml): one worker per usable core, at most 8 (memory: each worker
    holds tiny models, and the end-to-end tests start a pipeline subprocess)."""
    return max(1, min(len(os.sched_getaffinity(0)), 8))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One finished `--quick` pipeline run, shared by every test that needs one: (run_dir, process, seconds).

    Built once per test run: under pytest-xdist the first worker to ask builds it (a file lock) and the
    others read the same folder and the same recorded process output. Tests copy it before changing it.
    """
    import json
    import subprocess
    import time

    from filelock import FileLock

    from tests.pipeline_runs import run_quick

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder all workers of this run share
    run_dir, record = shared / "quick" / "run", shared / "quick" / "process.json"
    with FileLock(str(shared / "quick.lock")):
        if not record.is_file():
            start = time.time()
            proc = run_quick(run_dir)
            done = {"stdout": proc.stdout, "stderr": proc.stderr, "returncode": proc.returncode}
            record.write_text(json.dumps({**done, "seconds": time.time() - start}))
    done = json.loads(record.read_text())
    proc = subprocess.CompletedProcess(
        ["run_dpkd.py", "--quick"], done["returncode"], done["stdout"], done["stderr"]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir, proc, done["seconds"]
