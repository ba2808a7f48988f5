"""Synthetic generation on one process with every core as torch threads against the same cores as forked worker
processes of one thread each (``generate_synthetic_dataset(cpu_workers=...)``), in one run, alternately.

The demo's public base teacher shipped with the package, the pipeline's sampling and max length 128, shards of
256 prompts (2 samples each). Both produce the same shards (a shard is a function of seed and shard index
only). One JSON line per layout (median seconds over --repeats, samples/s) and the ratio.

    python benchmarks/generation_workers.py [--shards 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shards", type=int, default=4, help="Shards of 256 prompts x 2 samples to generate."
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_dpkd.data.base_model_cache import SHIPPED
    from hf_dpkd.data.demo import CONTROL_FIELDS, make_demo_dataset
    from hf_dpkd.privacy.histogram import uniform_distribution
    from hf_dpkd.synthetic.control_codes import ControlCodeFormat
    from hf_dpkd.synthetic.generation import SyntheticGenerationConfig, generate_synthetic_dataset
    from hf_dpkd.workers import can_fork, usable_cores

    if not can_fork():
        raise SystemExit("worker processes are forked: Linux only")
    cores = usable_cores()
    demo = make_demo_dataset(num_train=200, num_public=1000)
    tok = AutoTokenizer.from_pretrained(SHIPPED / "teacher")
    model = AutoModelForCausalLM.from_pretrained(SHIPPED / "teacher").eval()
    fmt = ControlCodeFormat(fields=tuple(CONTROL_FIELDS.items()))
    dist = uniform_distribution(fmt, demo.domain)
    gen = SyntheticGenerationConfig(max_length=128, num_return_sequences=2)
    num_samples = args.shards * 256 * 2
    layouts = {f"1 process x {cores} threads": (1, cores), f"{cores} workers x 1 thread": (cores, cores)}
    seconds: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(args.repeats):
        for name, (workers, threads) in layouts.items():
            torch.set_num_threads(threads)
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                generate_synthetic_dataset(
                    model,
                    tok,
                    dist,
                    num_samples,
                    out,
                    fmt=fmt,
                    generation=gen,
                    show_progress=False,
                    cpu_workers=workers,
                )
                seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    base = next(iter(medians.values()))
    for name, s in medians.items():
        print(
            json.dumps(
                {
                    "layout": name,
                    "cores": cores,
                    "samples": num_samples,
                    "median_s": round(s, 2),
                    "samples_per_s": round(num_samples / s, 1),
                    "speedup_vs_threads": round(base / s, 3),
                }
            )
        )


if __name__ == "__main__":
    main()
