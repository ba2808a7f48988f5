"""The DP teacher's step with micro-batches in batch order at the batch's full width against micro-batches
ordered by length and cut to their own longest row (what DPTrainer does), in one run.

The demo's own teacher (GPT-2 4 x 128 from the shipped base model), its own private training rows (lengths as
the pipeline tokenizes them) and its step: Poisson batches of 128 expected rows, micro-batches of 32, `auto`
clipping. Both plans step the same batches, alternately, on the same thread count; one JSON line per plan with
the median step time, the padded tokens it computes over per real token, and the time ratio to the old plan.

    python benchmarks/micro_batch_padding.py [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def in_order(inputs, max_rows, unit_ids=None):
    """The plan before ordering: consecutive rows, every micro-batch at the Poisson batch's full width."""
    n = inputs["input_ids"].shape[0]
    for s in range(0, n, max_rows):
        yield {k: v[s : s + max_rows] for k, v in inputs.items()}, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from demo_inputs import demo_training_rows, dp_sgd, dp_step  # benchmarks/demo_inputs.py, next to this
    from transformers import AutoModelForCausalLM

    from hf_dpkd.data.base_model_cache import SHIPPED
    from hf_dpkd.trainers.micro_batches import micro_batches

    config, _, rows, collate = demo_training_rows("teacher")
    gsm, opt = dp_sgd(AutoModelForCausalLM.from_pretrained(SHIPPED / "teacher"), config)
    q = config.teacher.teacher_batch_size / len(rows)
    g = torch.Generator().manual_seed(0)
    plans = {"in_order_full_width": in_order, "ordered_and_cut": micro_batches}
    times: dict[str, list[float]] = {name: [] for name in plans}
    tokens: dict[str, list[float]] = {name: [] for name in plans}
    for step in range(args.steps + 1):
        chosen = torch.nonzero(torch.rand(len(rows), generator=g) < q).flatten().tolist()
        batch = collate([rows[i] for i in chosen])
        real = int(batch["attention_mask"].sum())
        for name, plan in plans.items():
            start = time.perf_counter()
            computed = dp_step(gsm, opt, batch, plan, config.teacher.max_physical_batch_size)
            if step:  # the first step warms up
                times[name].append(time.perf_counter() - start)
                tokens[name].append(computed / real)
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    for name in plans:
        print(
            json.dumps(
                {
                    "plan": name,
                    "median_step_s": round(median[name], 4),
                    "tokens_per_real_token": round(sum(tokens[name]) / len(tokens[name]), 3),
                    "time_ratio_vs_in_order": round(median[name] / median["in_order_full_width"], 3),
                    "threads": args.threads,
                    "steps": args.steps,
                }
            )
        )


if __name__ == "__main__":
    main()
