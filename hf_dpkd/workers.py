"""Independent jobs (shards of synthetic text) in parallel CPU processes.

Why: decoding a small model is a chain of small steps that a second torch thread barely speeds up, while two
processes of one thread each decode two shards at once: 1.4x faster generation on a 2-core machine
(benchmarks/generation_workers.py). Training steps are large enough for threads: there, two processes of
one thread each were no faster than one process of two threads (measured on the demo's students), so the
pipeline's trainings stay in one process.

Workers are forked from the running process (Linux only: fork copies the loaded libraries, model and data,
so a worker starts at once) and die with it (a killed run leaves no worker writing into its output). Each
job must depend only on its own inputs, never on another job of the same call: a job's result is then the
same whichever worker runs it, and finished jobs are kept by a resumed run like the sequential loop's.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

_IN_WORKER = False
#: (job, items) of the running `run_jobs` call: forked workers inherit it, so only an item's index is pickled
#: (a job's closure may hold models, datasets and the run's context).
_FORKED: tuple[Callable[[Any], Any], list[Any]] | None = None


def can_fork() -> bool:
    """Workers are forked, which is only safe on Linux (macOS's system libraries are not fork-safe)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_cpu_workers(requested: int | None) -> int:
    """Worker processes of a run: `requested`, else one per usable core; 1 (no workers) under a multi-process
    launch, on an accelerator, or where processes cannot be forked."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or torch.cuda.is_available() or not can_fork():
        return 1
    return max(1, requested if requested is not None else usable_cores())


def _start_worker(threads: int, parent: int) -> None:
    global _IN_WORKER
    _IN_WORKER = True
    if sys.platform.startswith("linux"):  # SIGKILL this worker when the process that forked it dies
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before the line above: nobody would receive our result
            os._exit(1)
    import torch

    torch.set_num_threads(threads)


def run_jobs(
    job: Callable[[Any], Any], items: Sequence[Any], workers: int, threads: int | None = None
) -> Iterator[tuple[Any, Any]]:
    """Yield (item, job(item)) for every item as each finishes: in order in this process when `workers` <= 1
    or there is one item, else on min(workers, len(items)) forked processes of `threads` torch threads each
    (default: this process's threads shared among them). The first job that raises cancels the ones not
    started and re-raises here."""
    global _FORKED
    items = list(items)
    workers = min(workers, len(items))
    if workers <= 1 or _IN_WORKER or _FORKED is not None or not can_fork():
        for item in items:
            yield item, job(item)
        return
    import torch

    threads = threads or max(1, torch.get_num_threads() // workers)
    _FORKED = (job, items)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(threads, os.getpid()),
    )
    try:
        pending = {pool.submit(_run_forked, i): i for i in range(len(items))}
        while pending:
            done, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                i = pending.pop(future)
                yield items[i], future.result()  # raises the job's exception
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _FORKED = None


def _run_forked(index: int) -> Any:
    job, items = _FORKED
    return job(items[index])
