"""What dropout costs the demo's training steps: each model as shipped (dropout 0.1) against the same model with
every dropout probability set to 0 (`--train_dropout 0`, the default), in one run.

The demo teacher's DP-SGD step (shipped base teacher 4 x 128, its private training rows, Poisson batches of 128
expected rows, micro-batches of 32 ordered by length, `auto` clipping) and the student's plain step (shipped
base student 2 x 64, batches of 32 rows, as the synthetic-data students train). Both variants step the same
batches, alternately, on the same thread count; one JSON line per (model, variant) with the median step time
and its ratio to the variant with dropout.

    python benchmarks/train_dropout.py [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from demo_inputs import demo_training_rows, dp_sgd, dp_step  # benchmarks/demo_inputs.py, next to this
    from transformers import AutoModelForCausalLM

    from hf_dpkd.data.base_model_cache import SHIPPED
    from hf_dpkd.pipeline.loading import set_dropout
    from hf_dpkd.trainers.micro_batches import micro_batches

    config, _, rows, collate = demo_training_rows("teacher")
    variants = ("dropout_as_shipped", "dropout_0")

    def loaded(kind: str, variant: str):
        model = AutoModelForCausalLM.from_pretrained(SHIPPED / kind)
        if variant == "dropout_0":
            set_dropout(model, 0.0)
        return model.train()

    def teacher_step(gsm_and_opt, batch):
        dp_step(*gsm_and_opt, batch, micro_batches, config.teacher.max_physical_batch_size)

    def plain_step(model_and_opt, batch):
        model, opt = model_and_opt
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()

    def dp_teacher(variant: str):
        return dp_sgd(loaded("teacher", variant), config)

    def plain_student(variant: str):
        model = loaded("student", variant)
        return model, torch.optim.SGD(model.parameters(), lr=0.0)

    g = torch.Generator().manual_seed(0)
    q = config.teacher.teacher_batch_size / len(rows)
    cases = {
        "teacher_dp_sgd_step": (dp_teacher, teacher_step, lambda: torch.rand(len(rows), generator=g) < q),
        "student_plain_step": (
            plain_student,
            plain_step,
            lambda: torch.randperm(len(rows), generator=g) < 32,
        ),
    }
    for case, (build, step_fn, draw) in cases.items():
        built = {v: build(v) for v in variants}
        times: dict[str, list[float]] = {v: [] for v in variants}
        for step in range(args.steps + 1):
            batch = collate([rows[i] for i in torch.nonzero(draw()).flatten().tolist()])
            for v in variants:
                start = time.perf_counter()
                step_fn(built[v], batch)
                if step:  # the first step warms up
                    times[v].append(time.perf_counter() - start)
        median = {v: sorted(t)[len(t) // 2] for v, t in times.items()}
        for v in variants:
            line = {
                "step": case,
                "variant": v,
                "median_step_s": round(median[v], 4),
                "time_ratio_vs_dropout": round(median[v] / median["dropout_as_shipped"], 3),
                "threads": args.threads,
                "steps": args.steps,
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
