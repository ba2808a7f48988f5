"""hf_dpkd.workers: jobs on forked processes give what the sequential loop gives, fail loudly, die with
their parent."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from hf_dpkd.workers import can_fork, resolve_cpu_workers, run_jobs

pytestmark = pytest.mark.skipif(not can_fork(), reason="workers are forked processes: Linux only")


def _square_and_pid(x):
    time.sleep(0.2)  # long enough that every worker takes a job
    return x * x, os.getpid()


def test_jobs_on_workers_return_what_the_loop_returns():
    items = list(range(7))
    sequential = dict(run_jobs(_square_and_pid, items, 1))
    parallel = dict(run_jobs(_square_and_pid, items, 3))
    assert {k: v[0] for k, v in parallel.items()} == {k: v[0] for k, v in sequential.items()}
    assert {v[1] for v in sequential.values()} == {os.getpid()}
    assert os.getpid() not in {v[1] for v in parallel.values()}  # ran elsewhere
    assert 1 < len({v[1] for v in parallel.values()}) <= 3


def test_a_closure_over_unpicklable_state_runs_on_workers():
    """Only an index is sent to a worker: a job may close over models, locks, open files."""
    import threading

    lock = threading.Lock()
    assert dict(run_jobs(lambda x: (lock is not None) and x + 1, [1, 2, 3], 2)) == {1: 2, 2: 3, 3: 4}


def _fails_on_three(x):
    if x == 3:
        raise RuntimeError(f"job {x} failed")
    return x


def test_a_failing_job_raises_in_the_caller():
    with pytest.raises(RuntimeError, match="job 3 failed"):
        list(run_jobs(_fails_on_three, range(6), 2))


def test_workers_die_with_a_killed_parent(tmp_path):
    """A run killed mid-stage leaves no worker writing into its output (the resumed run would race it)."""
    marker = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import os, time
        from hf_dpkd.workers import run_jobs
        def job(x):
            with open({str(marker)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(60)
        list(run_jobs(job, [1, 2], 2))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and (not marker.is_file() or len(marker.read_text().split()) < 2):
        time.sleep(0.1)
    pids = [int(p) for p in marker.read_text().split()]
    assert len(pids) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    alive = pids
    while alive and time.time() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.1)
    assert not alive, f"workers {alive} outlived their killed parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie is dead, waiting for its reaper
    except FileNotFoundError:
        return False


def test_resolved_worker_count(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("an accelerator run uses one process")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_cpu_workers(3) == 3
    assert resolve_cpu_workers(None) == len(os.sched_getaffinity(0))
    monkeypatch.setenv("WORLD_SIZE", "2")  # a multi-process launch already uses every core
    assert resolve_cpu_workers(3) == 1
