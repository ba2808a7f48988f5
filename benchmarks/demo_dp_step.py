"""The DP-SGD step of the demo's own models against the plain step on the same micro-batches, in one run.

The demo's teacher (4 x 128) and student (2 x 64) as shipped, without dropout (the pipeline's default), their
private training rows as the pipeline tokenizes them, Poisson batches of 128 expected rows cut into
micro-batches of 32 ordered by length (what DPTrainer does), `auto` clipping. The plain step runs the same
micro-batches through a copy of the model with the summed loss and an ordinary optimizer step; the two
alternate on the same batches. One JSON line per model: median seconds of each and their ratio.

    python benchmarks/demo_dp_step.py [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


def plain_step(model, optimizer, batch, rows_per_micro_batch: int) -> None:
    """The non-private step over the same micro-batches: summed per-sequence losses, one optimizer step."""
    from hf_dpkd.trainers.losses import causal_lm_labels, dp_forward_kwargs, per_sequence_nll
    from hf_dpkd.trainers.micro_batches import micro_batches

    for micro, _ in micro_batches(batch, rows_per_micro_batch):
        logits = model(**dp_forward_kwargs(model, micro)).logits
        per_sequence_nll(logits, causal_lm_labels(micro)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="Batches per model (the first is a warm-up).")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from demo_inputs import demo_training_rows, dp_sgd, dp_step  # benchmarks/demo_inputs.py, next to this
    from transformers import AutoModelForCausalLM

    from hf_dpkd.data.base_model_cache import SHIPPED
    from hf_dpkd.pipeline.loading import set_dropout
    from hf_dpkd.trainers.micro_batches import micro_batches

    for kind in ("teacher", "student"):
        config, _, rows, collate = demo_training_rows(kind)
        model = AutoModelForCausalLM.from_pretrained(SHIPPED / kind)
        set_dropout(model, 0.0)
        plain = copy.deepcopy(model).train()
        plain_opt = torch.optim.SGD(plain.parameters(), lr=0.0)
        gsm, opt = dp_sgd(model, config)
        rows_per_micro_batch = config.teacher.max_physical_batch_size
        rate = config.teacher.teacher_batch_size / len(rows)
        g = torch.Generator().manual_seed(0)

        seconds: dict[str, list[float]] = {"dp": [], "plain": []}
        for _ in range(args.steps):
            picked = (torch.rand(len(rows), generator=g) < rate).nonzero().flatten().tolist()
            batch = collate([rows[i] for i in picked])
            start = time.perf_counter()
            dp_step(gsm, opt, batch, micro_batches, rows_per_micro_batch)
            seconds["dp"].append(time.perf_counter() - start)
            start = time.perf_counter()
            plain_step(plain, plain_opt, batch, rows_per_micro_batch)
            seconds["plain"].append(time.perf_counter() - start)
        dp, non_dp = (statistics.median(seconds[k][1:]) for k in ("dp", "plain"))
        print(
            json.dumps(
                {
                    "model": kind,
                    "threads": args.threads,
                    "rows_per_micro_batch": rows_per_micro_batch,
                    "dp_step_s": round(dp, 3),
                    "plain_step_s": round(non_dp, 3),
                    "time_ratio": round(dp / non_dp, 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
