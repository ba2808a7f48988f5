"""DistilDP end to end: DP teacher -> DP control codes -> synthetic data -> students -> evaluation -> audit.

    # the embedded demo (CPU, no network)
    accelerate launch --config_file recipes/accelerate/single_process.yaml examples/run_dpkd.py
    accelerate launch examples/run_dpkd.py --quick                 # a one-minute smoke run
    accelerate launch examples/run_dpkd.py --config recipes/yelp_gpt2-large_distilgpt2.yaml
    accelerate launch examples/run_dpkd.py --stages evaluate --run_dir runs/demo

Every stage writes into --run_dir; re-running the same command skips finished stages and resumes an
interrupted one. `--help` lists every argument. The console is a run log (a line per stage with its seconds,
progress bars, results); `--verbose` adds the Trainer's logs of each step. The accelerate config file states
the launcher's settings, which `accelerate launch` without one picks and lists in a warning block.
"""

import gc
import json
import os
import sys

from hf_dpkd.hub import DEFAULT_PRIVACY_UNIT
from hf_dpkd.pipeline import Pipeline, audit_summary_lines
from hf_dpkd.privacy.accounting import PrivacyLedger
from hf_dpkd.run_config import parse_run_config
from hf_dpkd.run_dir import RunDirLockedError, RunDirMismatchError
from hf_dpkd.workers import usable_cores


def set_cpu_threads(requested: int | None) -> None:
    """A single CPU process uses every usable core unless --cpu_threads says otherwise.

    `accelerate launch` with no accelerate config sets OMP_NUM_THREADS=1, which would run the demo on
    one core of a many-core machine; processes of a multi-process launch keep the launcher's share.
    """
    import torch

    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    threads = requested or usable_cores()
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        print(f"using {threads} CPU threads (--cpu_threads to change)", flush=True)


def main(argv=None) -> int:
    try:
        config = parse_run_config(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    set_cpu_threads(config.pipeline.cpu_threads)
    # Every Trainer.train() starts with accelerate's free_memory(), a full gc.collect() that walks the ~460,000
    # objects the imports made (0.2-0.3 s each time, a dozen trainings per run): they live as long as the
    # process, so they leave the collector's view; what the stages create is still collected as usual.
    gc.freeze()
    pipeline = Pipeline(config)
    try:
        if config.pipeline.repeats > 1:
            from hf_dpkd.draws import run_draws

            run_draws(config)
        else:
            pipeline.run_stages()
    except (RunDirLockedError, RunDirMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = pipeline.run.path
    if config.pipeline.repeats > 1:
        print(
            "\n"
            + (run / "results.md").read_text()
            + f"\nartifacts: {run} (one run per draw in {run / 'draws'})"
        )
        return 0
    table = run / "results.md"
    if table.is_file():
        print("\n" + table.read_text())
    teacher = run / "teacher" / "final"
    if (teacher / "privacy_ledger.json").is_file():
        ledger = PrivacyLedger.load(teacher)
        print(
            f"DistilDP total guarantee (ledger of {teacher}): epsilon={ledger.epsilon():.4f}, delta={ledger.delta:.3g}"
        )
        print(f"  privacy unit: {ledger.privacy_unit or DEFAULT_PRIVACY_UNIT}")
        for r in ledger.releases:
            print(
                f"  - {r.name}: {r.mechanism}, noise_multiplier={r.noise_multiplier:.4g}, "
                f"sample_rate={r.sample_rate:.4g}, steps={r.steps}"
            )
    audit = run / "audit" / "audit.json"
    if audit.is_file():
        for line in audit_summary_lines(json.loads(audit.read_text())):
            print(line)
    results = run / "results.json"
    seconds = json.loads(results.read_text()).get("stage_seconds", {}) if results.is_file() else {}
    if seconds:
        times = ", ".join(f"{stage} {s:.0f} s" for stage, s in seconds.items())
        print(f"stage times ({os.cpu_count()} CPU cores): {times}; total {sum(seconds.values()):.0f} s")
    print(f"\nartifacts: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
